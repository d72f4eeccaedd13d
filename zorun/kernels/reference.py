"""Torch reference of the kernel passes: the fallback where numba (CPU) or Triton (CUDA) does not import.

z is produced in chunks of CHUNK elements into one reused float32 buffer per
device, so no full-size temporary of a large tensor is ever allocated, and a
pass touches each parameter once while its chunk is in cache. Every pass over
a block draws the same chunk sequence from a generator seeded with
mix_seed(seed, block), so z is reproduced exactly between the perturbation and
the update. The numbers are the same in distribution as the Philox backends',
not the same bits (torch's generators are not Philox-by-offset on every device).
The algebra of each pass is documented in :mod:`zorun.kernels.passes`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from zorun.kernels.passes import ACCUMULATE, ADAM, HIZOO, MOMENTUM, PLAIN, Pass
from zorun.params import ParamSpace
from zorun.plan import mix_seed

# 128 KiB of fp32: z and the chunks of θ and state stay in cache while a chunk is processed.
CHUNK = 1 << 15
_ROUNDING_STREAM = 1  # the stochastic-rounding uniforms come from mix_seed(seed, block, 1)


class _Scratch:
    """Reused per-device buffers: z, an fp32 copy of a 16-bit chunk, a temporary, rounding uniforms."""

    def __init__(self, device: torch.device):
        self.z, self.x, self.tmp, self.u = (torch.empty(CHUNK, dtype=torch.float32, device=device) for _ in range(4))
        self.gen = torch.Generator(device=device)
        self.gen_u = torch.Generator(device=device)


_scratch: Dict[torch.device, _Scratch] = {}


def _scratch_for(device: torch.device) -> _Scratch:
    if device not in _scratch:
        _scratch[device] = _Scratch(device)
    return _scratch[device]


def z_chunks(param: torch.Tensor, seed: int, block: int) -> Iterator[Tuple[torch.Tensor, int]]:
    """Yield (fp32 z chunk, its start in the flat param) from torch's generator; the buffer is reused between chunks."""
    sc = _scratch_for(param.device)
    sc.gen.manual_seed(mix_seed(seed, block))
    n = param.numel()
    for start in range(0, n, CHUNK):
        z = sc.z[: min(CHUNK, n - start)]
        torch.randn(z.shape, generator=sc.gen, out=z)
        yield z, start


def round_stochastic_(dst: torch.Tensor, x: torch.Tensor, u: torch.Tensor) -> None:
    """dst (bf16/fp16) ← x (fp32) rounded to a neighbour, up with probability equal to x's distance from below.

    lo is x rounded toward zero, hi the next representable value away from
    zero; x → hi with probability (x − lo)/(hi − lo), so E[dst] = x and an
    update far below half an ulp still moves θ on average.
    """
    near = x.to(dst.dtype)
    bits = near.view(torch.int16)
    overshoot = near.float().abs() > x.abs()  # round-to-nearest went away from zero: step back
    lo = (bits - overshoot.to(torch.int16)).view(dst.dtype)
    hi = (lo.view(torch.int16) + 1).view(dst.dtype)
    lo32 = lo.float()
    up = u < (x - lo32) / (hi.float() - lo32)
    dst.copy_(torch.where(up, hi, lo))


def _stateful(states: List[torch.Tensor], start: int, size: int) -> List[torch.Tensor]:
    return [s.view(-1)[start : start + size] for s in states]


@contextmanager
def _one_thread() -> Iterator[None]:
    """torch on the calling thread for the pass. Its ops on a chunk are too small to split: randn is serial
    anyway, and on a busy 2-core machine a fork/join per op made the Adam pass 8-15x slower at 2 threads
    than at 1 (sqrt and div split above 2048 elements)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
@_one_thread()
def run_pass(space: ParamSpace, seed: int, blocks: List[int], coefs: List[List[float]], p: Pass,
             mean: Optional[Sequence[Optional[torch.Tensor]]] = None) -> None:
    """Execute one pass (see :mod:`zorun.kernels.passes`) block by block, chunk by chunk."""
    for b, row in zip(blocks, coefs):
        theta = space.blocks[b].tensor.data
        if p.mode == ACCUMULATE:
            target = p.states[0][b].view(-1)
            for z, start in z_chunks(theta, seed, b):
                target[start : start + z.numel()].add_(z, alpha=row[2])
            continue
        flat = theta.view(-1)
        states = [st[b] for st in p.states]
        mu = None if mean is None or mean[b] is None else mean[b].view(-1)
        sc = _scratch_for(theta.device)
        sixteen = theta.dtype != torch.float32
        if p.stochastic and sixteen:
            sc.gen_u.manual_seed(mix_seed(seed, b, _ROUNDING_STREAM))
        for z, start in z_chunks(theta, seed, b):
            size = z.numel()
            view = flat[start : start + size]
            x = sc.x[:size].copy_(view) if sixteen else view
            chunk = _stateful(states, start, size)
            if p.mode == HIZOO:
                _hizoo(x, z, chunk[0], sc.tmp[:size], row, update=p.smooth != 0.0)
            else:
                _along_direction(x, z, None if mu is None else mu[start : start + size], chunk, sc, size, row, p)
            if not sixteen:
                continue
            if p.stochastic:
                u = sc.u[:size]
                u.uniform_(generator=sc.gen_u)
                round_stochastic_(view, x, u)
            else:
                view.copy_(x)


def _along_direction(x: torch.Tensor, z: torch.Tensor, mu: Optional[torch.Tensor], states: List[torch.Tensor],
                     sc: _Scratch, size: int, row: List[float], p: Pass) -> None:
    """The plain, momentum and Adam passes on one chunk x (fp32, θ's or a copy), direction μ + s·z."""
    a, keep, c, e1, e2, am, cm = row
    if a != 0.0:
        x.add_(z, alpha=a)
    if mu is not None and am != 0.0:
        x.add_(mu, alpha=am)
    if keep != 1.0:
        x.mul_(keep)
    if p.mode == PLAIN:
        x.add_(z, alpha=-c)
        if mu is not None:
            x.add_(mu, alpha=-cm)
    elif p.mode == MOMENTUM:
        (buf,) = states
        buf.mul_(p.momentum).add_(z, alpha=c)
        if mu is not None:
            buf.add_(mu, alpha=cm)
        x.add_(buf, alpha=-p.lr)
    elif p.mode == ADAM:
        m, v = states
        g = torch.mul(z, c, out=sc.tmp[:size])
        if mu is not None:
            g.add_(mu, alpha=cm)
        m.mul_(p.beta1).add_(g, alpha=1.0 - p.beta1)
        v.mul_(p.beta2).addcmul_(g, g, value=1.0 - p.beta2)
        denom = torch.div(v, e2, out=sc.tmp[:size]).sqrt_().add_(p.adam_eps)
        step = torch.div(m, e1, out=sc.u[:size]).mul_(p.lr).div_(denom)
        x.sub_(step)
    else:
        raise ValueError(f"unknown pass mode {p.mode}")


def _hizoo(x: torch.Tensor, z: torch.Tensor, h: torch.Tensor, tmp: torch.Tensor, row: List[float], update: bool) -> None:
    """x ← keep·(x + a·z/√H); with update, H ← H·(e1 + e2·z²); x −= c·z/√H."""
    a, keep, c, e1, e2, _, _ = row
    d = torch.div(z, torch.sqrt(h, out=tmp), out=tmp)
    x.add_(d, alpha=a)
    if keep != 1.0:
        x.mul_(keep)
    if update:
        h.mul_(torch.mul(z, z, out=tmp).mul_(e2).add_(e1))
        d = torch.div(z, torch.sqrt(h, out=tmp), out=tmp)
    x.sub_(d, alpha=c)
