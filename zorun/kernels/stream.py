"""The definition of z: what every Philox backend (Triton, numba) computes, to the bit.

z of element e of block b under step seed s:

    tile t = e // TILE, quarter q = (e % TILE) // QUAD, lane l = e % QUAD
    (r0, r1, r2, r3) = Philox-4x32-10(key = (s mod 2^32, s >> 32), counter = (idx mod 2^32, idx >> 32, b, STREAM_Z))
                       with idx = t·QUAD + l
    u_i = uniform(r_i):  the int32 bits of r_i (i ↦ ¬i if negative) × UNIFORM_SCALE, in [0, 1)
    quarter 0, 1:  √(−2·log max(u0, UNIFORM_MIN)) · (cos, sin)(2π·u1)      Box–Muller
    quarter 2, 3:  the same with u2, u3

The stochastic-rounding uniform of element e is uniform(r_q) of the counter with STREAM_ROUND.

log and (cos, sin) are not a math library's: they are the polynomials below,
evaluated in float32 with IEEE +, −, ×, ÷ and √ only (correctly rounded
everywhere, no fused multiply–add), in the order written in each backend. So
the CPU backend, Triton's interpreter and a GPU give the same bits, where a
libm/libdevice log or sin would differ in the last ulp from one to the next.

    log u:  u = 2^e·m with m in [√½, √2) (from the float's bits), f = m − 1,
            s = f / (2 + f), log m = 2·atanh s = 2s + s·s²·(L3 + s²·(L5 + s²·(L7 + s²·L9)))
            (Taylor; |s| ≤ 0.172, the next term is below 1e-9 relative), plus e·ln 2 in two parts
    2π·v:   k = trunc(4v + ½), f = v − k/4 in [−⅛, ⅛] (exact), then Taylor in f of sin(2πf) to f⁹ and
            cos(2πf) to f¹⁰ (next terms below 2e-9), rotated by the quadrant k mod 4
"""

from __future__ import annotations

import math

TILE = 4096  # elements per tile; with QUAD, part of the stream's definition
QUAD = TILE // 4  # one Philox call serves the four quarters of a tile at one lane
STREAM_Z, STREAM_ROUND = 0, 1  # the fourth counter word

UNIFORM_SCALE = 4.6566127342e-10  # Triton's uint_to_uniform_float: the largest scale keeping u < 1
UNIFORM_MIN = 1.0e-7  # u0 is clamped here, so |z| ≤ √(−2·log 1e-7) ≈ 5.68

LOG_SPLIT = 0x3F3504F3  # the float32 bits of √½: e = (bits − LOG_SPLIT) >> 23 puts m in [√½, √2)
LN2_HI = 45426 / 65536  # ln 2 to 16 bits, so e·LN2_HI is exact for |e| ≤ 127
LN2_LO = math.log(2) - LN2_HI
LOG_COEFS = (2 / 3, 2 / 5, 2 / 7, 2 / 9)  # L3, L5, L7, L9: 2·atanh s = 2s + Σ 2·s^k / k


def _taylor(first: int, count: int):
    """(−1)^⌊k/2⌋·(2π)^k / k! for k = first, first + 2, ...: sin(2πf) and cos(2πf) in powers of f."""
    return tuple((-1) ** (k // 2) * (2 * math.pi) ** k / math.factorial(k) for k in range(first, first + 2 * count, 2))


SIN_COEFS = _taylor(1, 5)  # f, f³, ..., f⁹
COS_COEFS = _taylor(2, 5)  # f², f⁴, ..., f¹⁰ (the constant term is 1)
