"""The parameter-norm guard: ends a run whose parameters blow up while every value stays finite.

A non-finite loss is caught at the step it appears (zorun.recovery undoes the
step exactly). A huge lr need not produce one: with estimator.lr=1e30 the
loss of a classification task sits at ln 2 with a projected gradient of 0
while the weights climb to 1e31, and the run would end `completed`. So every
budget.log_every steps, and before every checkpoint, the run compares the L2
norm of its trainable parameters with their norm when the attempt started;
past MAX_NORM_GROWTH times that (or times 1, for a start near 0, as LoRA's B)
the run ends `diverged` (exit 3) and no checkpoint of the blown-up values is
written. One norm pass reads θ once, against the three passes of a ZO step.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from zorun.params import ParamSpace

MAX_NORM_GROWTH = 100.0


def param_norm(space: ParamSpace) -> float:
    """The L2 norm of every trainable value, finite while every value is (float16 blocks summed in float32)."""
    total = 0.0
    for b in space.blocks:
        t = b.tensor.detach()
        if not t.is_floating_point():
            continue
        wide = torch.float32 if t.dtype == torch.float16 else None
        norm = float(torch.linalg.vector_norm(t, dtype=wide))
        if math.isinf(norm):  # squares beyond the dtype's range: scale by the largest value (inf if one is)
            top = float(t.abs().max())
            norm = float(torch.linalg.vector_norm(t / top, dtype=wide)) * top if math.isfinite(top) else math.inf
        total += norm * norm
    return math.sqrt(total)


class NormGuard:
    """The norm at the start of an attempt, and the check against MAX_NORM_GROWTH times it."""

    def __init__(self, space: ParamSpace):
        self.start = param_norm(space)
        self.limit = MAX_NORM_GROWTH * max(self.start, 1.0)

    def check(self, space: ParamSpace, step: int) -> Optional[str]:
        """None while the norm is within the limit, else why the run diverged."""
        norm = param_norm(space)
        if norm <= self.limit:
            return None
        return (f"the parameters' L2 norm grew from {self.start:.4g} to {norm:.4g} by step {step} (more than "
                f"{MAX_NORM_GROWTH:g}x): the updates blew up while finite; lower estimator.lr")
