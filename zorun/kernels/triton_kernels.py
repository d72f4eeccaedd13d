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
stream and must not change between a perturbation and its update.
Math is fp32; θ is stored in its own dtype, rounded to nearest or, for 16-bit
θ and ``stochastic``, to a random neighbour with probability by distance.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from triton.language.random import pair_uniform_to_normal, philox, uint_to_uniform_float

from zorun.kernels.passes import ACCUMULATE, NUM_COEFS, Pass
from zorun.params import ParamSpace

TILE = 4096  # elements per program; part of the z stream's definition
NUM_WARPS = 4  # free to tune: does not change z
ICOLS = 11  # int64 columns per table row: θ offset, numel, first tile, block, state1, state2, mean, then 4 int64 = 8 fp32 slots
FCOL = 14  # first fp32 column (a, keep, c, bc1, bc2, am, cm) in the float32 view of a row


@triton.jit
def _philox4(seed, idx, block, STREAM: tl.constexpr):
    """Four uint32 blocks from counter (idx lo, idx hi, block, STREAM) under key seed."""
    c0 = idx.to(tl.uint32)
    c1 = (idx >> 32).to(tl.uint32)
    zero = c0 * 0
    return philox(seed, c0, c1, zero + block.to(tl.uint32), zero + STREAM)


@triton.jit
def _part(theta, s1, s2, mu, offs, numel, z, u, a, keep, c, bc1, bc2, am, cm, h0, h1, h2, h3,
          MODE: tl.constexpr, STOCHASTIC: tl.constexpr, MASKED: tl.constexpr, HAS_MEAN: tl.constexpr):
    """One quarter tile: load θ (and state, and mean), apply the pass in fp32, store."""
    if MASKED:
        mask = offs < numel
    else:
        mask = None
    if MODE == 3:  # accumulate (passes.ACCUMULATE): state += c·z, θ untouched
        tl.store(s1 + offs, tl.load(s1 + offs, mask=mask) + c * z, mask=mask)
    else:
        x = tl.load(theta + offs, mask=mask).to(tl.float32)
        if HAS_MEAN:  # direction μ + s·z: a·z + am·μ, c·z + cm·μ
            mean = tl.load(mu + offs, mask=mask)
            x = (x + a * z + am * mean) * keep
            cz = c * z + cm * mean
        else:
            x = (x + a * z) * keep
            cz = c * z
        if MODE == 0:  # plain (passes.PLAIN; 1 = MOMENTUM, 2 = ADAM)
            x = x - cz
        elif MODE == 1:  # momentum: h0 = β, h1 = η
            buf = h0 * tl.load(s1 + offs, mask=mask) + cz
            tl.store(s1 + offs, buf, mask=mask)
            x = x - h1 * buf
        else:  # adam: h0 = β1, h1 = β2, h2 = η, h3 = ε_adam
            g = cz
            m = h0 * tl.load(s1 + offs, mask=mask) + (1.0 - h0) * g
            v = h1 * tl.load(s2 + offs, mask=mask) + (1.0 - h1) * (g * g)
            tl.store(s1 + offs, m, mask=mask)
            tl.store(s2 + offs, v, mask=mask)
            x = x - h2 * (m / bc1) / (tl.sqrt(v / bc2) + h3)
        dt = theta.dtype.element_ty
        if STOCHASTIC:  # lo = x toward zero, hi = next value away from zero; hi with prob (x − lo)/(hi − lo)
            lo = x.to(dt, fp_downcast_rounding="rtz")
            hi = (lo.to(tl.int16, bitcast=True) + 1).to(tl.int16).to(dt, bitcast=True)
            lo32 = lo.to(tl.float32)
            y = tl.where(u < (x - lo32) / (hi.to(tl.float32) - lo32), hi, lo)
        else:
            y = x.to(dt)
        tl.store(theta + offs, y, mask=mask)


@triton.jit
def _tile(theta, s1, s2, mu, start, local, numel, seed, block, a, keep, c, bc1, bc2, am, cm, h0, h1, h2, h3,
          MODE: tl.constexpr, STOCHASTIC: tl.constexpr, MASKED: tl.constexpr, QUAD: tl.constexpr,
          HAS_MEAN: tl.constexpr):
    idx = local * QUAD + tl.arange(0, QUAD).to(tl.int64)
    r0, r1, r2, r3 = _philox4(seed, idx, block, 0)
    z0, z1 = pair_uniform_to_normal(uint_to_uniform_float(r0), uint_to_uniform_float(r1))
    z2, z3 = pair_uniform_to_normal(uint_to_uniform_float(r2), uint_to_uniform_float(r3))
    if STOCHASTIC:
        q0, q1, q2, q3 = _philox4(seed, idx, block, 1)
        u0, u1, u2, u3 = (uint_to_uniform_float(q0), uint_to_uniform_float(q1),
                          uint_to_uniform_float(q2), uint_to_uniform_float(q3))
    else:
        u0, u1, u2, u3 = z0, z1, z2, z3  # unused
    offs = start + tl.arange(0, QUAD).to(tl.int64)
    _part(theta, s1, s2, mu, offs, numel, z0, u0, a, keep, c, bc1, bc2, am, cm, h0, h1, h2, h3,
          MODE, STOCHASTIC, MASKED, HAS_MEAN)
    _part(theta, s1, s2, mu, offs + QUAD, numel, z1, u1, a, keep, c, bc1, bc2, am, cm, h0, h1, h2, h3,
          MODE, STOCHASTIC, MASKED, HAS_MEAN)
    _part(theta, s1, s2, mu, offs + 2 * QUAD, numel, z2, u2, a, keep, c, bc1, bc2, am, cm, h0, h1, h2, h3,
          MODE, STOCHASTIC, MASKED, HAS_MEAN)
    _part(theta, s1, s2, mu, offs + 3 * QUAD, numel, z3, u3, a, keep, c, bc1, bc2, am, cm, h0, h1, h2, h3,
          MODE, STOCHASTIC, MASKED, HAS_MEAN)


@triton.jit(do_not_specialize=["seed", "n_rows", "n_search", "h0", "h1", "h2", "h3"])
def _pass_kernel(anchor, state_anchor, itab, ftab, seed, n_rows, n_search, h0, h1, h2, h3,
                 MODE: tl.constexpr, STOCHASTIC: tl.constexpr, ALIGNED: tl.constexpr,
                 TILE_: tl.constexpr, ICOLS_: tl.constexpr, FCOL_: tl.constexpr, HAS_MEAN: tl.constexpr = False):
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
    a = tl.load(frow)
    keep = tl.load(frow + 1)
    c = tl.load(frow + 2)
    bc1 = tl.load(frow + 3)
    bc2 = tl.load(frow + 4)
    am = tl.load(frow + 5)
    cm = tl.load(frow + 6)
    start = local * TILE_
    if start + TILE_ <= numel:  # full tiles: no mask, so accesses vectorise
        _tile(theta, s1, s2, mu, start, local, numel, seed, block, a, keep, c, bc1, bc2, am, cm, h0, h1, h2, h3,
              MODE, STOCHASTIC, False, TILE_ // 4, HAS_MEAN)
    else:
        _tile(theta, s1, s2, mu, start, local, numel, seed, block, a, keep, c, bc1, bc2, am, cm, h0, h1, h2, h3,
              MODE, STOCHASTIC, True, TILE_ // 4, HAS_MEAN)


def _hyper(p: Pass) -> Tuple[float, float, float, float]:
    if p.mode == 1:
        return p.momentum, p.lr, 0.0, 0.0
    if p.mode == 2:
        return p.beta1, p.beta2, p.lr, p.adam_eps
    return 0.0, 0.0, 0.0, 0.0


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
    table = torch.zeros(len(blocks), ICOLS, dtype=torch.int64)
    table[:, :7] = torch.tensor([theta_offs, numels, first, blocks, state_offs[0], state_offs[1], mean_offs],
                                dtype=torch.int64).T
    table.view(torch.float32)[:, FCOL : FCOL + NUM_COEFS] = torch.tensor(coefs, dtype=torch.float32)
    table = table.to(thetas[0].device)
    ftab = table.view(torch.float32)
    aligned = all(o % 8 == 0 for o in theta_offs + state_offs[0] + state_offs[1] + mean_offs)
    sixteen = thetas[0].dtype in (torch.float16, torch.bfloat16)
    n = len(blocks)
    _pass_kernel[(total,)](
        thetas[0], ftab if fp32_anchor is None else fp32_anchor, table, ftab, seed, n, (n - 1).bit_length(),
        *_hyper(p), MODE=p.mode, STOCHASTIC=bool(p.stochastic and sixteen and p.mode != ACCUMULATE),
        ALIGNED=aligned, TILE_=TILE, ICOLS_=ICOLS, FCOL_=FCOL, HAS_MEAN=bool(means), num_warps=NUM_WARPS,
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
