"""Triton kernels for the perturb / update passes: one launch per pass per dtype and device.

Layout: a block table, not a flat arena. Each launch gets one small int64
table with a row per active block (element offset from the first block, numel, first tile, block id,
state offsets, mean offset, and the fp32 coefficients of :mod:`zorun.kernels.passes`).
A Plan's mean (LDSD) is addressed, like the states, by fp32 element offsets
from the state anchor; blocks with and without a mean go to separate launches
(HAS_MEAN is a compile-time flag), so a pass without a mean compiles to
exactly the kernel it was before the mean existed.
The grid is the total number of TILE-element tiles of the *active* blocks, so
a subset (AdaLeZO's layers) costs in proportion to its size; each program
finds its row by a binary search over the tiles' prefix sum (log2 of ~770
scalar loads for opt-30b, nothing next to its 4096 elements). An arena would
need every parameter re-allocated as a view of one buffer, which fights
tied weights, peft wrappers and accelerate's device_map; the table takes the
model as loaded.

z: Triton's Philox, keyed by the step seed with counter (element quad, block
id, stream), so z of (seed, block, element) is the same in every pass and
unrelated across blocks and seeds. One Philox call gives four normals (two
Box-Muller pairs) for the four quarters of a tile; TILE therefore fixes the
stream (:mod:`zorun.kernels.stream` defines it, and the CPU backend computes
the same bits). Math is fp32 with IEEE operations only: ``div_rn`` and
``sqrt_rn`` (Triton's ``/`` and ``sqrt`` are approximate on a GPU), the
stream's own log and sin/cos, and no fused multiply-add (``enable_fp_fusion``
off), so a GPU rounds as the CPU does. θ is stored in its own dtype, rounded
to nearest or, for 16-bit θ and ``stochastic``, to a random neighbour with
probability by distance.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from triton.language.random import philox, uint_to_uniform_float

from zorun.kernels import stream
from zorun.kernels import passes
from zorun.kernels.passes import ACCUMULATE, NUM_COEFS, NUM_HYPER, Pass, hyper
from zorun.kernels.stream import TILE
from zorun.params import ParamSpace

NUM_WARPS = 4  # free to tune: does not change z
ICOLS = 11  # int64 columns per table row: θ offset, numel, first tile, block, state1, state2, mean, then 4 int64 = 8 fp32 slots
FCOL = 14  # first fp32 column (a, keep, c, e1, e2, am, cm) in the float32 view of a row

# pass kinds (zorun.kernels.passes) and z's Philox streams, named for the kernel
_PLAIN, _MOMENTUM, _ADAM = tl.constexpr(passes.PLAIN), tl.constexpr(passes.MOMENTUM), tl.constexpr(passes.ADAM)
_ACCUMULATE, _HIZOO = tl.constexpr(passes.ACCUMULATE), tl.constexpr(passes.HIZOO)
_STREAM_Z, _STREAM_ROUND = tl.constexpr(stream.STREAM_Z), tl.constexpr(stream.STREAM_ROUND)
_UMIN = tl.constexpr(stream.UNIFORM_MIN)
_SPLIT = tl.constexpr(stream.LOG_SPLIT)
_LN2_HI = tl.constexpr(stream.LN2_HI)
_LN2_LO = tl.constexpr(stream.LN2_LO)
_L3, _L5, _L7, _L9 = (tl.constexpr(x) for x in stream.LOG_COEFS)
_S1, _S3, _S5, _S7, _S9 = (tl.constexpr(x) for x in stream.SIN_COEFS)
_C2, _C4, _C6, _C8, _C10 = (tl.constexpr(x) for x in stream.COS_COEFS)


@triton.jit
def _log(u):
    """log u for u in [1e-7, 1), as zorun.kernels.stream defines it."""
    bits = u.to(tl.int32, bitcast=True)
    e = (bits - _SPLIT) >> 23
    f = (bits - (e << 23)).to(tl.float32, bitcast=True) - 1.0
    s = tl.div_rn(f, 2.0 + f)
    s2 = s * s
    p = s2 * (_L3 + s2 * (_L5 + s2 * (_L7 + s2 * _L9)))
    ef = e.to(tl.float32)
    return ef * _LN2_HI + (((s + s) + s * p) + ef * _LN2_LO)


@triton.jit
def _cos_sin_turn(v):
    """(cos 2πv, sin 2πv) for v in [0, 1), as zorun.kernels.stream defines them."""
    k = (v * 4.0 + 0.5).to(tl.int32)
    f = v - k.to(tl.float32) * 0.25
    f2 = f * f
    s = f * (_S1 + f2 * (_S3 + f2 * (_S5 + f2 * (_S7 + f2 * _S9))))
    c = 1.0 + f2 * (_C2 + f2 * (_C4 + f2 * (_C6 + f2 * (_C8 + f2 * _C10))))
    q = k & 3
    swap = (q & 1) != 0
    cv = tl.where(swap, s, c)
    sv = tl.where(swap, c, s)
    return tl.where(((q + 1) & 2) != 0, -cv, cv), tl.where((q & 2) != 0, -sv, sv)


@triton.jit
def _normal_pair(r0, r1):
    """Two normals from two Philox words (Box-Muller)."""
    r = tl.sqrt_rn(-2.0 * _log(tl.maximum(uint_to_uniform_float(r0), _UMIN)))
    c, s = _cos_sin_turn(uint_to_uniform_float(r1))
    return r * c, r * s


@triton.jit
def _philox4(seed, idx, block, STREAM: tl.constexpr):
    """Four uint32 blocks from counter (idx lo, idx hi, block, STREAM) under key seed."""
    c0 = idx.to(tl.uint32)
    c1 = (idx >> 32).to(tl.uint32)
    zero = c0 * 0
    return philox(seed, c0, c1, zero + block.to(tl.uint32), zero + STREAM)


@triton.jit
def _part(theta, s1, s2, mu, frow, hrow, offs, numel, z, u,
          MODE: tl.constexpr, STOCHASTIC: tl.constexpr, MASKED: tl.constexpr, HAS_MEAN: tl.constexpr):
    """One quarter tile: load θ (and state, and mean), apply the pass in fp32, store.

    frow: the block's coefficients (a, keep, c, e1, e2, am, cm; zorun.kernels.passes);
    hrow: the pass's scalars (passes.hyper). s1, s2 per mode: momentum s1 = buf;
    adam s1 = m, s2 = v; hizoo s1 = H; accumulate s1 = the target.
    """
    if MASKED:
        mask = offs < numel
    else:
        mask = None
    c = tl.load(frow + 2)
    if MODE == _ACCUMULATE:  # state += c·z, θ untouched
        tl.store(s1 + offs, tl.load(s1 + offs, mask=mask) + c * z, mask=mask)
        return
    a = tl.load(frow)
    keep = tl.load(frow + 1)
    x = tl.load(theta + offs, mask=mask).to(tl.float32)
    if MODE == _HIZOO:  # direction z/√H, H's EMA H·(e1 + e2·z²) when the pass updates it
        h = tl.load(s1 + offs, mask=mask)
        x = (x + a * tl.div_rn(z, tl.sqrt_rn(h))) * keep
        if tl.load(hrow) != 0.0:
            h = h * (tl.load(frow + 3) + tl.load(frow + 4) * (z * z))
            tl.store(s1 + offs, h, mask=mask)
        x = x - c * tl.div_rn(z, tl.sqrt_rn(h))
    else:
        if HAS_MEAN:  # direction μ + s·z: a·z + am·μ, c·z + cm·μ
            mean = tl.load(mu + offs, mask=mask)
            x = (x + a * z + tl.load(frow + 5) * mean) * keep
            cz = c * z + tl.load(frow + 6) * mean
        else:
            x = (x + a * z) * keep
            cz = c * z
        if MODE == _PLAIN:
            x = x - cz
        elif MODE == _MOMENTUM:
            beta, lr = tl.load(hrow), tl.load(hrow + 1)
            buf = beta * tl.load(s1 + offs, mask=mask) + cz
            tl.store(s1 + offs, buf, mask=mask)
            x = x - lr * buf
        else:  # adam; e1, e2 = the bias corrections 1 − β1^t, 1 − β2^t
            beta1, one_minus_beta1 = tl.load(hrow), tl.load(hrow + 1)
            beta2, one_minus_beta2 = tl.load(hrow + 2), tl.load(hrow + 3)
            lr, adam_eps = tl.load(hrow + 4), tl.load(hrow + 5)
            m = beta1 * tl.load(s1 + offs, mask=mask) + one_minus_beta1 * cz
            v = beta2 * tl.load(s2 + offs, mask=mask) + one_minus_beta2 * (cz * cz)
            tl.store(s1 + offs, m, mask=mask)
            tl.store(s2 + offs, v, mask=mask)
            m_hat = tl.div_rn(m, tl.load(frow + 3))
            x = x - tl.div_rn(lr * m_hat, tl.sqrt_rn(tl.div_rn(v, tl.load(frow + 4))) + adam_eps)
    dt = theta.dtype.element_ty
    if STOCHASTIC:  # lo = x toward zero, hi = next value away from zero; hi with prob (x − lo)/(hi − lo)
        lo = x.to(dt, fp_downcast_rounding="rtz")
        hi = (lo.to(tl.int16, bitcast=True) + 1).to(tl.int16).to(dt, bitcast=True)
        lo32 = lo.to(tl.float32)
        y = tl.where(u < tl.div_rn(x - lo32, hi.to(tl.float32) - lo32), hi, lo)
    else:
        y = x.to(dt)
    tl.store(theta + offs, y, mask=mask)


@triton.jit
def _tile(theta, s1, s2, mu, frow, hrow, start, local, numel, seed, block,
          MODE: tl.constexpr, STOCHASTIC: tl.constexpr, MASKED: tl.constexpr, QUAD: tl.constexpr,
          HAS_MEAN: tl.constexpr):
    """One tile: a Philox call per lane gives the four quarters' z (and rounding uniforms), see zorun.kernels.stream."""
    idx = local * QUAD + tl.arange(0, QUAD).to(tl.int64)
    r0, r1, r2, r3 = _philox4(seed, idx, block, _STREAM_Z)
    z0, z1 = _normal_pair(r0, r1)
    z2, z3 = _normal_pair(r2, r3)
    if STOCHASTIC:
        q0, q1, q2, q3 = _philox4(seed, idx, block, _STREAM_ROUND)
        us = (uint_to_uniform_float(q0), uint_to_uniform_float(q1),
              uint_to_uniform_float(q2), uint_to_uniform_float(q3))
    else:
        us = (z0, z1, z2, z3)  # unused
    zs = (z0, z1, z2, z3)
    offs = start + tl.arange(0, QUAD).to(tl.int64)
    for q in tl.static_range(4):
        _part(theta, s1, s2, mu, frow, hrow, offs + q * QUAD, numel, zs[q], us[q], MODE, STOCHASTIC, MASKED, HAS_MEAN)


@triton.jit(do_not_specialize=["seed", "n_rows", "n_search"])
def _pass_kernel(anchor, state_anchor, itab, ftab, seed, n_rows, n_search,
                 MODE: tl.constexpr, STOCHASTIC: tl.constexpr, ALIGNED: tl.constexpr,
                 TILE_: tl.constexpr, ICOLS_: tl.constexpr, FCOL_: tl.constexpr, HAS_MEAN: tl.constexpr = False):
    """Program pid: find its block's row, then run tile pid − (the block's first tile) of that block."""
    pid = tl.program_id(0).to(tl.int64)
    lo = n_rows * 0
    hi = n_rows
    for _ in range(n_search):  # last row whose first tile <= pid
        mid = (lo + hi) // 2
        go = tl.load(itab + mid.to(tl.int64) * ICOLS_ + 2) <= pid
        lo = tl.where(go, mid, lo)
        hi = tl.where(go, hi, mid)
    row = itab + lo.to(tl.int64) * ICOLS_
    frow = ftab + lo.to(tl.int64) * (2 * ICOLS_) + FCOL_
    hrow = ftab + n_rows.to(tl.int64) * (2 * ICOLS_)  # the row after the blocks': the pass's scalars
    o_theta = tl.load(row)  # element offsets from the anchors, so the pointers keep their types
    o_s1 = tl.load(row + 4)
    o_s2 = tl.load(row + 5)
    o_mu = tl.load(row + 6)
    if ALIGNED:  # every offset is a multiple of 8 elements: loads and stores can vectorise
        o_theta = tl.multiple_of(o_theta, 8)
        o_s1 = tl.multiple_of(o_s1, 8)
        o_s2 = tl.multiple_of(o_s2, 8)
        o_mu = tl.multiple_of(o_mu, 8)
    theta = anchor + o_theta
    s1 = state_anchor + o_s1
    s2 = state_anchor + o_s2
    mu = state_anchor + o_mu
    numel = tl.load(row + 1)
    local = pid - tl.load(row + 2)
    block = tl.load(row + 3)
    start = local * TILE_
    if start + TILE_ <= numel:  # full tiles: no mask, so accesses vectorise
        _tile(theta, s1, s2, mu, frow, hrow, start, local, numel, seed, block,
              MODE, STOCHASTIC, False, TILE_ // 4, HAS_MEAN)
    else:
        _tile(theta, s1, s2, mu, frow, hrow, start, local, numel, seed, block,
              MODE, STOCHASTIC, True, TILE_ // 4, HAS_MEAN)


def _launch(space: ParamSpace, seed: int, blocks: List[int], coefs: List[List[float]], p: Pass,
            means: Optional[List[torch.Tensor]]) -> None:
    thetas = [space.blocks[b].tensor.data for b in blocks]
    for b, t in zip(blocks, thetas):
        if not t.is_contiguous():
            raise ValueError(f"the Triton kernels need contiguous parameters; {space.blocks[b].name} is not")
    numels = [t.numel() for t in thetas]
    tiles = [(n + TILE - 1) // TILE for n in numels]
    first, total = [], 0
    for t in tiles:
        first.append(total)
        total += t
    if total == 0:
        return
    theta_offs = _offsets([t.data_ptr() for t in thetas], thetas[0])
    states = [[st[b] for b in blocks] for st in p.states]
    fp32_anchor = states[0][0] if states else means[0] if means else None  # None: the table itself
    state_offs = [_offsets([t.data_ptr() for t in group], fp32_anchor) for group in states]
    state_offs += [[0] * len(blocks)] * (2 - len(state_offs))
    mean_offs = _offsets([t.data_ptr() for t in means], fp32_anchor) if means else [0] * len(blocks)
    table = torch.zeros(len(blocks) + 1, ICOLS, dtype=torch.int64)  # the last row: the pass's scalars
    table[:-1, :7] = torch.tensor([theta_offs, numels, first, blocks, state_offs[0], state_offs[1], mean_offs],
                                dtype=torch.int64).T
    table.view(torch.float32)[:-1, FCOL : FCOL + NUM_COEFS] = torch.tensor(coefs, dtype=torch.float32)
    table.view(torch.float32)[-1, :NUM_HYPER] = torch.tensor(hyper(p), dtype=torch.float32)
    table = table.to(thetas[0].device)
    ftab = table.view(torch.float32)
    aligned = all(o % 8 == 0 for o in theta_offs + state_offs[0] + state_offs[1] + mean_offs)
    sixteen = thetas[0].dtype in (torch.float16, torch.bfloat16)
    n = len(blocks)
    _pass_kernel[(total,)](
        thetas[0], ftab if fp32_anchor is None else fp32_anchor, table, ftab, seed, n, (n - 1).bit_length(),
        MODE=p.mode, STOCHASTIC=bool(p.stochastic and sixteen and p.mode != ACCUMULATE),
        ALIGNED=aligned, TILE_=TILE, ICOLS_=ICOLS, FCOL_=FCOL, HAS_MEAN=bool(means), num_warps=NUM_WARPS,
        enable_fp_fusion=False,  # separate IEEE multiplies and adds: the CPU backend's bits
    )


def _offsets(ptrs: List[int], anchor: torch.Tensor) -> List[int]:
    """Element offsets of ptrs from anchor's data pointer (tensors of anchor's dtype)."""
    base, size = anchor.data_ptr(), anchor.element_size()
    if any((q - base) % size for q in ptrs):
        raise ValueError("a parameter or state tensor is not aligned to its element size; the Triton kernels cannot address it")
    return [(q - base) // size for q in ptrs]


def run_pass(space: ParamSpace, seed: int, blocks: List[int], coefs: List[List[float]], p: Pass,
             mean: Optional[Sequence[Optional[torch.Tensor]]] = None) -> None:
    """One launch per (device, dtype, with a mean or not) among the active blocks."""
    groups: Dict[Tuple[torch.device, torch.dtype, bool], Tuple[List[int], List[List[float]]]] = {}
    for b, row in zip(blocks, coefs):
        t = space.blocks[b].tensor
        if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"the Triton kernels take float32/float16/bfloat16 parameters; {space.blocks[b].name} is {t.dtype}")
        ids, rows = groups.setdefault((t.device, t.dtype, mean is not None and mean[b] is not None), ([], []))
        ids.append(b)
        rows.append(row)
    for (_, _, has_mean), (ids, rows) in groups.items():
        _launch(space, seed, ids, rows, p, [mean[b] for b in ids] if has_mean else None)
