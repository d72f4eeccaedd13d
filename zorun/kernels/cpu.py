"""CPU backend: the Triton kernels' passes and z stream, compiled for the CPU with numba.

Same layout as the Triton kernels: one call per pass over a table with a row
per active block (addresses of θ, its states and mean; numel; block id; θ's
format) and the fp32 coefficients of :mod:`zorun.kernels.passes`. The tiles
of all active blocks are split into one contiguous range per thread
(``prange``). Per tile, z is generated into a 16 KiB buffer that stays in L1
and applied at once: θ and its state are read and written once per pass, and
no z larger than a tile ever exists. z is the stream of
:mod:`zorun.kernels.stream` bit for bit (compiled in
:mod:`zorun.kernels.cpu_stream`, with the 16-bit conversions); the arithmetic follows the Triton
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
from numba import njit, prange

from zorun.kernels.cpu_stream import (BF16, F16, F32, f32_at, narrow, normals, u16_at, uniforms, widen,
                                      ZERO)
from zorun.kernels.passes import ACCUMULATE, ADAM, HIZOO, MOMENTUM, PLAIN, Pass, hyper
from zorun.kernels.stream import TILE
from zorun.params import ParamSpace

FORMATS = {torch.float32: F32, torch.bfloat16: BF16, torch.float16: F16}
CHUNK = 8 * TILE  # z_chunks' chunk: whole tiles
GROUP = 16  # tiles per unit of work handed to a thread (256 KiB of fp32 θ)
# int64 columns of a table row
THETA, NUMEL, BLOCK, FMT, STATE1, STATE2, MEAN = range(7)
ICOLS = 7
_z_buffer: Optional[torch.Tensor] = None


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
    normals(z, r, k0, k1, local, block)
    if mode == ACCUMULATE:
        target = numba.carray(f32_at(row[STATE1] + 4 * start), n)
        for i in range(n):
            target[i] = target[i] + c * z[i]
        return
    t16 = numba.carray(u16_at(row[THETA] + 2 * start), n if fmt != F32 else 0)
    if fmt == F32:
        x = numba.carray(f32_at(row[THETA] + 4 * start), n)
    else:
        x = xb[:n]
        widen(x, t16, fmt)
    if mode == HIZOO:  # s1 = H
        h = numba.carray(f32_at(row[STATE1] + 4 * start), n)
        for i in range(n):
            hi = h[i]
            v = (x[i] + a * (z[i] / np.sqrt(hi))) * keep
            if hyp[0] != ZERO:  # the pass updates H
                hi = hi * (e1 + e2 * (z[i] * z[i]))
                h[i] = hi
            x[i] = v - c * (z[i] / np.sqrt(hi))
    else:
        if row[MEAN] != 0:
            mu = numba.carray(f32_at(row[MEAN] + 4 * start), n)
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
            buf = numba.carray(f32_at(row[STATE1] + 4 * start), n)
            for i in range(n):
                b = beta * buf[i] + g[i]
                buf[i] = b
                x[i] = x[i] - lr * b
        elif mode == ADAM:  # e1, e2: the bias corrections 1 − β1^t, 1 − β2^t
            beta1, one_minus_beta1, beta2, one_minus_beta2, lr, adam_eps = hyp[0], hyp[1], hyp[2], hyp[3], hyp[4], hyp[5]
            m = numba.carray(f32_at(row[STATE1] + 4 * start), n)
            v = numba.carray(f32_at(row[STATE2] + 4 * start), n)
            for i in range(n):
                mi = beta1 * m[i] + one_minus_beta1 * g[i]
                vi = beta2 * v[i] + one_minus_beta2 * (g[i] * g[i])
                m[i] = mi
                v[i] = vi
                x[i] = x[i] - (lr * (mi / e1)) / (np.sqrt(vi / e2) + adam_eps)
    if fmt != F32:
        if stochastic:
            uniforms(u, r, k0, k1, local, block)
        narrow(t16, x, u, fmt, stochastic)


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
        normals(z, r, k0, k1, first_tile + start // TILE, block)
        out[start : start + n] = z[:n]


# ------------------------------------------------------------------ Python side
def _keys(seed: int) -> Tuple[np.uint64, np.uint64]:
    """Philox's key words from the step seed, as triton.language.random.philox splits it."""
    seed &= 0xFFFFFFFFFFFFFFFF
    return np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)


def _threads() -> int:
    """torch's thread count, and dynamic scheduling: on a busy machine a static half per thread waits for the
    slower thread, and 2 threads ran slower than 1.

    The first call launches numba's pool; its OpenMP layer then resets the process's OpenMP thread count,
    which torch shares (a run set to 1 thread found 2 after its first pass, and every pass then woke the
    pool): torch's count is put back."""
    torch_threads = torch.get_num_threads()
    n = max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    numba.set_parallel_chunksize(1)
    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
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

