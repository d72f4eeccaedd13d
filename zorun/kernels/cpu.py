"""CPU backend: the Triton kernels' passes and z stream, compiled for the CPU with numba.

Same layout as the Triton kernels: one call per pass over a table with a row
per active block (addresses of θ, its states and mean; numel; block id; θ's
format) and the fp32 coefficients of :mod:`zorun.kernels.passes`. The tiles
of all active blocks are split into one contiguous range per thread
(``prange``). Per tile, z is generated into a 16 KiB buffer that stays in L1
and applied at once: θ and its state are read and written once per pass, and
no z larger than a tile ever exists. z is the stream of
:mod:`zorun.kernels.stream` bit for bit; the arithmetic follows the Triton
kernel's operation by operation (fp32, IEEE, no fused multiply-add), so an
fp32 pass gives the same bits on both. 16-bit θ is read and written as
uint16 with bit-wise conversions: round to nearest even, or stochastic
rounding from the stream's second Philox stream.

Compiled once per machine: ``cache=True`` keeps the machine code next to this
file (or in numba's user cache where that is read-only), and every pass kind
and format goes through the one compiled entry point (runtime flags, not
specialisations). Threads follow ``torch.get_num_threads()``.
"""

from __future__ import annotations

from typing import Iterator, List, Optional, Sequence, Tuple

import numba
import numpy as np
import torch
from numba import njit, prange, types
from numba.extending import intrinsic

from zorun.kernels import stream
from zorun.kernels.passes import ACCUMULATE, ADAM, HIZOO, MOMENTUM, PLAIN, Pass, hyper
from zorun.kernels.stream import QUAD, TILE
from zorun.params import ParamSpace

F32, BF16, F16 = 0, 1, 2
FORMATS = {torch.float32: F32, torch.bfloat16: BF16, torch.float16: F16}
CHUNK = 8 * TILE  # z_chunks' chunk: whole tiles
GROUP = 16  # tiles per unit of work handed to a thread (256 KiB of fp32 θ)
# int64 columns of a table row
THETA, NUMEL, BLOCK, FMT, STATE1, STATE2, MEAN = range(7)
ICOLS = 7
_z_buffer: Optional[torch.Tensor] = None


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


_f32_at, _u16_at = _pointer(types.float32), _pointer(types.uint16)
_bits, _float = _bitcast(types.float32, types.uint32), _bitcast(types.uint32, types.float32)

# --------------------------------------------------------- typed constants
# numba types a Python float as float64, which would turn fp32 math into fp64: every constant is typed here
_f = np.float32
_ZERO, _HALF, _ONE, _TWO, _FOUR, _QUARTER, _MINUS_TWO = (_f(x) for x in (0, 0.5, 1, 2, 4, 0.25, -2))
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
def _normals(z, r, k0, k1, local, block):
    """z of tile `local` of `block`: its four quarters into z[0:TILE] (r: scratch for the words)."""
    _words(r, k0, k1, local, block, stream.STREAM_Z)
    _pairs(z[:QUAD], z[QUAD : 2 * QUAD], r[:QUAD], r[QUAD : 2 * QUAD])
    _pairs(z[2 * QUAD : 3 * QUAD], z[3 * QUAD :], r[2 * QUAD : 3 * QUAD], r[3 * QUAD :])


@njit(error_model="numpy")
def _uniforms(u, r, k0, k1, local, block):
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
def _widen(x, t16, fmt):
    for i in range(x.size):
        x[i] = _to_f32(t16[i], fmt)


@njit(cache=True, error_model="numpy")
def _narrow(t16, x, u, fmt, stochastic):
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


# ------------------------------------------------------------------ passes
@njit(cache=True, error_model="numpy")
def _tile(row, coefs, hyp, local, z, u, xb, g, r, k0, k1, mode, stochastic):
    """One tile of one block: the pass of zorun.kernels.passes, operation by operation as the Triton kernel.

    coefs: the block's (a, keep, c, e1, e2, am, cm); hyp: the pass's scalars (passes.hyper). STATE1/STATE2
    per mode: momentum buf; adam m, v; hizoo H; accumulate the target."""
    start = local * TILE
    n = min(TILE, row[NUMEL] - start)
    block, fmt = row[BLOCK], row[FMT]
    a, keep, c, e1, e2, am, cm = coefs[0], coefs[1], coefs[2], coefs[3], coefs[4], coefs[5], coefs[6]
    _normals(z, r, k0, k1, local, block)
    if mode == ACCUMULATE:
        target = numba.carray(_f32_at(row[STATE1] + 4 * start), n)
        for i in range(n):
            target[i] = target[i] + c * z[i]
        return
    t16 = numba.carray(_u16_at(row[THETA] + 2 * start), n if fmt != F32 else 0)
    if fmt == F32:
        x = numba.carray(_f32_at(row[THETA] + 4 * start), n)
    else:
        x = xb[:n]
        _widen(x, t16, fmt)
    if mode == HIZOO:  # s1 = H
        h = numba.carray(_f32_at(row[STATE1] + 4 * start), n)
        for i in range(n):
            hi = h[i]
            v = (x[i] + a * (z[i] / np.sqrt(hi))) * keep
            if hyp[0] != _ZERO:  # the pass updates H
                hi = hi * (e1 + e2 * (z[i] * z[i]))
                h[i] = hi
            x[i] = v - c * (z[i] / np.sqrt(hi))
    else:
        if row[MEAN] != 0:
            mu = numba.carray(_f32_at(row[MEAN] + 4 * start), n)
            for i in range(n):
                x[i] = (x[i] + a * z[i] + am * mu[i]) * keep
                g[i] = c * z[i] + cm * mu[i]
        else:
            for i in range(n):
                x[i] = (x[i] + a * z[i]) * keep
                g[i] = c * z[i]
        if mode == PLAIN:
            for i in range(n):
                x[i] = x[i] - g[i]
        elif mode == MOMENTUM:
            beta, lr = hyp[0], hyp[1]
            buf = numba.carray(_f32_at(row[STATE1] + 4 * start), n)
            for i in range(n):
                b = beta * buf[i] + g[i]
                buf[i] = b
                x[i] = x[i] - lr * b
        elif mode == ADAM:  # e1, e2: the bias corrections 1 − β1^t, 1 − β2^t
            beta1, one_minus_beta1, beta2, one_minus_beta2, lr, adam_eps = hyp[0], hyp[1], hyp[2], hyp[3], hyp[4], hyp[5]
            m = numba.carray(_f32_at(row[STATE1] + 4 * start), n)
            v = numba.carray(_f32_at(row[STATE2] + 4 * start), n)
            for i in range(n):
                mi = beta1 * m[i] + one_minus_beta1 * g[i]
                vi = beta2 * v[i] + one_minus_beta2 * (g[i] * g[i])
                m[i] = mi
                v[i] = vi
                x[i] = x[i] - (lr * (mi / e1)) / (np.sqrt(vi / e2) + adam_eps)
    if fmt != F32:
        if stochastic:
            _uniforms(u, r, k0, k1, local, block)
        _narrow(t16, x, u, fmt, stochastic)


@njit(cache=True, error_model="numpy")
def _group(table, coefs, hyp, first, k0, k1, mode, stochastic, w):
    """Tiles w·GROUP .. (w + 1)·GROUP − 1 of the pass; tiles first[r] .. first[r + 1] − 1 belong to row r."""
    z = np.empty(TILE, np.float32)
    u = np.empty(TILE, np.float32)
    xb = np.empty(TILE, np.float32)
    g = np.empty(TILE, np.float32)
    r = np.empty(TILE, np.uint32)
    t0 = w * GROUP
    row = np.searchsorted(first, t0, side="right") - 1
    for t in range(t0, min(t0 + GROUP, first[-1])):
        while first[row + 1] <= t:
            row += 1
        _tile(table[row], coefs[row], hyp, t - first[row], z, u, xb, g, r, k0, k1, mode, stochastic)


@njit(parallel=True, cache=True, error_model="numpy")
def _run(table, coefs, hyp, first, k0, k1, mode, stochastic):
    """The groups of tiles, handed to the threads one at a time."""
    for w in prange((first[-1] + GROUP - 1) // GROUP):
        _group(table, coefs, hyp, first, k0, k1, mode, stochastic, w)


@njit(cache=True, error_model="numpy")
def _run_serial(table, coefs, hyp, first, k0, k1, mode, stochastic):
    """The same on the calling thread: a pass of one group, or with one thread, must not wait for the pool."""
    for w in range((first[-1] + GROUP - 1) // GROUP):
        _group(table, coefs, hyp, first, k0, k1, mode, stochastic, w)


@njit(cache=True, error_model="numpy")
def _fill(out, k0, k1, block, first_tile):
    """z of tiles first_tile, first_tile + 1, ... of block into out (any length)."""
    z = np.empty(TILE, np.float32)
    r = np.empty(TILE, np.uint32)
    for start in range(0, out.size, TILE):
        n = min(TILE, out.size - start)
        _normals(z, r, k0, k1, first_tile + start // TILE, block)
        out[start : start + n] = z[:n]


# ------------------------------------------------------------------ Python side
def _keys(seed: int) -> Tuple[np.uint64, np.uint64]:
    """Philox's key words from the step seed, as triton.language.random.philox splits it."""
    seed &= 0xFFFFFFFFFFFFFFFF
    return np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)


def _threads() -> int:
    """torch's thread count, and dynamic scheduling: on a busy machine a static half per thread waits for the
    slower thread, and 2 threads ran slower than 1."""
    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    numba.set_parallel_chunksize(1)
    return n


def _addr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def run_pass(space: ParamSpace, seed: int, blocks: List[int], coefs: List[List[float]], p: Pass,
             mean: Optional[Sequence[Optional[torch.Tensor]]] = None) -> None:
    """One parallel call for all active blocks, whatever their dtype (θ must be contiguous)."""
    table = np.zeros((len(blocks), ICOLS), dtype=np.int64)
    states = [[st[b] for b in blocks] for st in p.states] + [[None] * len(blocks)] * (2 - len(p.states))
    for i, b in enumerate(blocks):
        theta = space.blocks[b].tensor.data
        if theta.dtype not in FORMATS or not theta.is_contiguous() or theta.device.type != "cpu":
            raise ValueError(f"the CPU kernels take contiguous float32/float16/bfloat16 CPU tensors; "
                             f"{space.blocks[b].name} is {theta.dtype} on {theta.device}")
        table[i] = (theta.data_ptr(), theta.numel(), b, FORMATS[theta.dtype], _addr(states[0][i]),
                    _addr(states[1][i]), _addr(None if mean is None else mean[b]))
    first = np.zeros(len(blocks) + 1, dtype=np.int64)
    np.cumsum((table[:, NUMEL] + TILE - 1) // TILE, out=first[1:])
    if first[-1] == 0:
        return
    k0, k1 = _keys(seed)
    run = _run if int(first[-1]) > GROUP and _threads() > 1 else _run_serial
    run(table, np.asarray(coefs, dtype=np.float32), np.asarray(hyper(p), dtype=np.float32), first, k0, k1,
         p.mode, p.stochastic)


def z_chunks(param: torch.Tensor, seed: int, block: int) -> Iterator[Tuple[torch.Tensor, int]]:
    """Yield (fp32 z chunk on param's device, its start in the flat param); the buffer is reused between chunks."""
    global _z_buffer
    k0, k1 = _keys(seed)
    if _z_buffer is None:
        _z_buffer = torch.empty(CHUNK, dtype=torch.float32)
    buf, n = _z_buffer, param.numel()
    for start in range(0, n, CHUNK):
        z = buf[: min(CHUNK, n - start)]
        _fill(z.numpy(), k0, k1, block, start // TILE)
        yield z.to(param.device), start

