"""The numba backend's building blocks: the z stream of :mod:`zorun.kernels.stream` and bf16/fp16 bits.

Kept apart from :mod:`zorun.kernels.cpu` (the passes and their launcher) so
each file reads as one thing: here, Philox-4x32-10 and the Box–Muller
transform in float32 with the stream's own log and sine polynomials, written
so LLVM vectorises the lane loops; and the 16-bit conversions done on the
bits, so rounding to nearest even matches torch's and the GPU's.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

from zorun.kernels import stream
from zorun.kernels.stream import QUAD, TILE

F32, BF16, F16 = 0, 1, 2  # θ's format in a pass table row

# ----------------------------------------------------------- LLVM casts
def _pointer(ty):
    @intrinsic
    def at(typingctx, addr):
        """An int64 address as a typed pointer (for numba.carray)."""
        def codegen(context, builder, sig, args):
            return builder.inttoptr(args[0], context.get_value_type(sig.return_type))
        return types.CPointer(ty)(types.int64), codegen
    return at


def _bitcast(src, dst):
    @intrinsic
    def cast(typingctx, x):
        """The bits of x reinterpreted, as C's memcpy between a float and an int of its width."""
        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], context.get_value_type(dst))
        return dst(src), codegen
    return cast


f32_at, u16_at = _pointer(types.float32), _pointer(types.uint16)
_bits, _float = _bitcast(types.float32, types.uint32), _bitcast(types.uint32, types.float32)

# --------------------------------------------------------- typed constants
# numba types a Python float as float64, which would turn fp32 math into fp64: every constant is typed here
_f = np.float32
ZERO, _HALF, _ONE, _TWO, _FOUR, _QUARTER, _MINUS_TWO = (_f(x) for x in (0, 0.5, 1, 2, 4, 0.25, -2))
_SCALE, _UMIN = _f(stream.UNIFORM_SCALE), _f(stream.UNIFORM_MIN)
_LN2_HI, _LN2_LO = _f(stream.LN2_HI), _f(stream.LN2_LO)
_L3, _L5, _L7, _L9 = (_f(x) for x in stream.LOG_COEFS)
_S1, _S3, _S5, _S7, _S9 = (_f(x) for x in stream.SIN_COEFS)
_C2, _C4, _C6, _C8, _C10 = (_f(x) for x in stream.COS_COEFS)
_LOG_BIAS, _ONE_BITS, _F127 = np.uint32((127 << 23) - stream.LOG_SPLIT), np.uint32(127 << 23), _f(127)
_RA, _RB = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)  # Philox-4x32 multipliers
# the key of round n is the seed's plus n times these, mod 2^32
_KA, _KB = (tuple(np.uint64(n * k & 0xFFFFFFFF) for n in range(10)) for k in (0x9E3779B9, 0xBB67AE85))
_M32, _S32 = np.uint64(0xFFFFFFFF), np.uint64(32)
_SIGN16, _EXP_BIAS16 = np.uint32(0x8000), np.uint32(0x38000000)


# ------------------------------------------------------------- the stream
@njit(inline="always", error_model="numpy")
def _round(k0, k1, c0, c1, c2, c3):
    pa = _RA * c0
    pb = _RB * c2
    return (pb >> _S32) ^ c1 ^ k0, pb & _M32, (pa >> _S32) ^ c3 ^ k1, pa & _M32


@njit(inline="always", error_model="numpy")
def _philox(k0, k1, c0, c1, c2, c3):
    """Philox-4x32-10 on 32-bit words held in uint64, as triton.language.random.philox_impl (unrolled: the
    lane loop around it then vectorises)."""
    c0, c1, c2, c3 = _round(k0, k1, c0, c1, c2, c3)
    c0, c1, c2, c3 = _round((k0 + _KA[1]) & _M32, (k1 + _KB[1]) & _M32, c0, c1, c2, c3)
    c0, c1, c2, c3 = _round((k0 + _KA[2]) & _M32, (k1 + _KB[2]) & _M32, c0, c1, c2, c3)
    c0, c1, c2, c3 = _round((k0 + _KA[3]) & _M32, (k1 + _KB[3]) & _M32, c0, c1, c2, c3)
    c0, c1, c2, c3 = _round((k0 + _KA[4]) & _M32, (k1 + _KB[4]) & _M32, c0, c1, c2, c3)
    c0, c1, c2, c3 = _round((k0 + _KA[5]) & _M32, (k1 + _KB[5]) & _M32, c0, c1, c2, c3)
    c0, c1, c2, c3 = _round((k0 + _KA[6]) & _M32, (k1 + _KB[6]) & _M32, c0, c1, c2, c3)
    c0, c1, c2, c3 = _round((k0 + _KA[7]) & _M32, (k1 + _KB[7]) & _M32, c0, c1, c2, c3)
    c0, c1, c2, c3 = _round((k0 + _KA[8]) & _M32, (k1 + _KB[8]) & _M32, c0, c1, c2, c3)
    return _round((k0 + _KA[9]) & _M32, (k1 + _KB[9]) & _M32, c0, c1, c2, c3)


@njit(inline="always", error_model="numpy")
def _uniform(r):
    v = np.int32(r)
    return np.float32(v if v >= 0 else ~v) * _SCALE


@njit(inline="always", error_model="numpy")
def _log(u):
    """The stream's log. Its e = (bits − LOG_SPLIT) >> 23 (arithmetic) is computed here as the unsigned
    ((bits + 127·2^23 − LOG_SPLIT) >> 23) − 127, the same number in 32-bit lanes."""
    bits = _bits(u)
    eb = np.uint32(np.uint32(bits + _LOG_BIAS) >> np.uint32(23))  # e + 127
    f = _float(np.uint32(bits + _ONE_BITS - np.uint32(eb << np.uint32(23)))) - _ONE
    s = f / (_TWO + f)
    s2 = s * s
    p = s2 * (_L3 + s2 * (_L5 + s2 * (_L7 + s2 * _L9)))
    ef = np.float32(np.int32(eb)) - _F127
    return ef * _LN2_HI + (((s + s) + s * p) + ef * _LN2_LO)


@njit(inline="always", error_model="numpy")
def _cos_sin_turn(v):
    k = np.int32(v * _FOUR + _HALF)
    f = v - np.float32(k) * _QUARTER
    f2 = f * f
    s = f * (_S1 + f2 * (_S3 + f2 * (_S5 + f2 * (_S7 + f2 * _S9))))
    c = _ONE + f2 * (_C2 + f2 * (_C4 + f2 * (_C6 + f2 * (_C8 + f2 * _C10))))
    q = k & 3
    cv = s if q & 1 else c
    sv = c if q & 1 else s
    return (-cv if (q + 1) & 2 else cv), (-sv if q & 2 else sv)


@njit(inline="always", error_model="numpy")
def _normal_pair(r0, r1):
    r = np.sqrt(_MINUS_TWO * _log(max(_uniform(r0), _UMIN)))
    c, s = _cos_sin_turn(_uniform(r1))
    return r * c, r * s


@njit(error_model="numpy")
def _words(r, k0, k1, local, block, stream_id):
    """The Philox words of tile `local` of `block`: word q of lane l at r[q·QUAD + l]."""
    base = np.uint64(local) * np.uint64(QUAD)
    b, st = np.uint64(block), np.uint64(stream_id)
    for lane in range(QUAD):
        idx = base + np.uint64(lane)
        r0, r1, r2, r3 = _philox(k0, k1, idx & _M32, idx >> _S32, b, st)
        r[lane] = np.uint32(r0)
        r[QUAD + lane] = np.uint32(r1)
        r[2 * QUAD + lane] = np.uint32(r2)
        r[3 * QUAD + lane] = np.uint32(r3)


@njit(error_model="numpy")
def _pairs(zc, zs, r0, r1):
    for lane in range(QUAD):
        zc[lane], zs[lane] = _normal_pair(r0[lane], r1[lane])


@njit(error_model="numpy")
def normals(z, r, k0, k1, local, block):
    """z of tile `local` of `block`: its four quarters into z[0:TILE] (r: scratch for the words)."""
    _words(r, k0, k1, local, block, stream.STREAM_Z)
    _pairs(z[:QUAD], z[QUAD : 2 * QUAD], r[:QUAD], r[QUAD : 2 * QUAD])
    _pairs(z[2 * QUAD : 3 * QUAD], z[3 * QUAD :], r[2 * QUAD : 3 * QUAD], r[3 * QUAD :])


@njit(error_model="numpy")
def uniforms(u, r, k0, k1, local, block):
    """The stochastic-rounding uniforms of tile `local` of `block` into u[0:TILE]."""
    _words(r, k0, k1, local, block, stream.STREAM_ROUND)
    for i in range(TILE):
        u[i] = _uniform(r[i])


# ------------------------------------------------------ 16-bit conversions
@njit(cache=True, error_model="numpy")
def _to_f32(h, fmt):
    """The float32 value of bf16/fp16 bits h."""
    h = np.uint32(h)
    if fmt == BF16:
        return _float(h << 16)
    sign = (h & _SIGN16) << 16
    mag = h & np.uint32(0x7FFF)
    if mag >= np.uint32(0x7C00):  # inf, nan
        return _float(sign | np.uint32(0x7F800000) | ((mag & np.uint32(0x3FF)) << 13))
    if mag >= np.uint32(0x400):  # normal
        return _float(sign | ((mag << 13) + _EXP_BIAS16))
    return _float(sign | _bits(np.float32(mag) * _f(2.0 ** -24)))  # subnormal: mag units of 2^-24


@njit(cache=True, error_model="numpy")
def _bf16(x, nearest):
    """bf16 bits of x: to nearest even, or toward zero."""
    b = _bits(x)
    if (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):  # nan: keep it quiet
        return np.uint16((b >> 16) | np.uint32(0x40))
    if nearest:
        b = b + np.uint32(0x7FFF) + ((b >> 16) & np.uint32(1))
    return np.uint16(b >> 16)


@njit(cache=True, error_model="numpy")
def _f16(x, nearest):
    """fp16 bits of x: to nearest even (numpy's and the GPU's cast), or toward zero."""
    b = _bits(x)
    sign = (b >> 16) & _SIGN16
    a = b & np.uint32(0x7FFFFFFF)
    if a > np.uint32(0x7F800000):
        return np.uint16(sign | np.uint32(0x7E00))
    if a >= (np.uint32(0x477FF000) if nearest else np.uint32(0x47800000)):  # beyond the largest finite
        return np.uint16(sign | (np.uint32(0x7C00) if nearest else np.uint32(0x7BFF)))
    if a < np.uint32(0x38800000):  # below 2^-14: a multiple of 2^-24, rounded by the float adder
        m = _float(a) * _f(2.0 ** 24)
        if nearest:
            m = (m + _f(2.0 ** 23)) - _f(2.0 ** 23)
        return np.uint16(sign | np.uint32(np.int32(m)))
    if nearest:
        a = a + np.uint32(0xFFF) + ((a >> 13) & np.uint32(1))
    return np.uint16(sign | ((a - _EXP_BIAS16) >> 13))


@njit(cache=True, error_model="numpy")
def _from_f32(x, fmt, nearest):
    return _bf16(x, nearest) if fmt == BF16 else _f16(x, nearest)


@njit(cache=True, error_model="numpy")
def widen(x, t16, fmt):
    for i in range(x.size):
        x[i] = _to_f32(t16[i], fmt)


@njit(cache=True, error_model="numpy")
def narrow(t16, x, u, fmt, stochastic):
    """t16 ← x in bf16/fp16: to nearest, or to the neighbour away from zero with probability (x − lo)/(hi − lo)."""
    for i in range(x.size):
        v = x[i]
        if stochastic:
            lo = _from_f32(v, fmt, False)
            hi = np.uint16(lo + np.uint16(1))
            lo32 = _to_f32(lo, fmt)
            t16[i] = hi if u[i] < (v - lo32) / (_to_f32(hi, fmt) - lo32) else lo
        else:
            t16[i] = _from_f32(v, fmt, True)
