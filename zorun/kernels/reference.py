"""Torch reference of the perturb/update kernels, for CPU and tensors Triton cannot take.

z is produced in chunks of CHUNK elements into one reused float32 buffer per
device, so no full-size temporary of a large tensor is ever allocated, and a
pass touches each parameter once while its chunk is in cache. Every pass over
a block draws the same chunk sequence from the same seeded generator, so z is
reproduced exactly between the perturbation and the update.
"""

from __future__ import annotations

from typing import Dict, Iterator, Tuple

import torch

from zorun.params import ParamSpace
from zorun.plan import Plan, mix_seed

CHUNK = 1 << 16
_buffers: Dict[torch.device, torch.Tensor] = {}
_generators: Dict[torch.device, torch.Generator] = {}


def _scratch(device: torch.device) -> Tuple[torch.Tensor, torch.Generator]:
    if device not in _buffers:
        _buffers[device] = torch.empty(CHUNK, dtype=torch.float32, device=device)
        _generators[device] = torch.Generator(device=device)
    return _buffers[device], _generators[device]


def z_chunks(param: torch.Tensor, seed: int, block: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Yield (fp32 z chunk, matching flat view of param); the z buffer is reused between chunks."""
    flat = param.data.view(-1)
    buf, gen = _scratch(flat.device)
    gen.manual_seed(mix_seed(seed, block))
    n = flat.numel()
    for start in range(0, n, CHUNK):
        size = min(CHUNK, n - start)
        z = buf[:size]
        torch.randn(size, generator=gen, out=z)
        yield z, flat[start : start + size]


def _apply(view: torch.Tensor, fn) -> None:
    """Run fn on an fp32 version of view and store back (in place when view is fp32)."""
    if view.dtype == torch.float32:
        fn(view)
    else:
        tmp = view.float()
        fn(tmp)
        view.copy_(tmp)


@torch.no_grad()
def perturb_(space: ParamSpace, plan: Plan, alpha: float) -> None:
    for i, b in enumerate(plan.blocks.tolist()):
        a = alpha * plan.scale_of(i)
        for z, view in z_chunks(space.blocks[b].tensor, plan.seed, b):
            _apply(view, lambda t: t.add_(z, alpha=a))


@torch.no_grad()
def update_(space: ParamSpace, plan: Plan, restore: float, coef: float, decay: float = 0.0) -> None:
    """θ ← (1 − decay)·(θ + restore·s·z) − coef·w·s·z; decay = η·λ, skipped for non-decayed blocks."""
    for i, b in enumerate(plan.blocks.tolist()):
        s, w = plan.scale_of(i), plan.weight_of(i)
        keep = 1.0 - decay if space.blocks[b].decay else 1.0
        a, c = restore * s, coef * w * s

        def fused(t: torch.Tensor) -> None:
            if a != 0.0:
                t.add_(z, alpha=a)
            if keep != 1.0:
                t.mul_(keep)
            t.add_(z, alpha=-c)

        for z, view in z_chunks(space.blocks[b].tensor, plan.seed, b):
            _apply(view, fused)
