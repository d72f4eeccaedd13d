"""estimator=lozo and lozo-m: low-rank perturbations U·Vᵀ with a lazily resampled V (Chen et al. 2024).

"Enhancing Zeroth-order Fine-tuning for Language Models with Low-rank
Structures" (arXiv:2410.07698), public code optsuite/LOZO
(``lowrank_zo_perturb_parameters``, ``lowrank_zo_update`` and
``lowrank_zo_update_momentum`` in LOZOtrainer.py). For a weight with ≥ 2
dimensions, viewed as an m×n matrix (n = the product of the other dims):

    V ∈ R^{n×r} ~ N(0, 1), drawn when the block starts a new window of ν steps (the "lazy" V)
    U ∈ R^{m×r} ~ N(0, 1), drawn every step (from the step's seed, regenerated, never stored)
    g = (L(θ + ε·U Vᵀ) − L(θ − ε·U Vᵀ)) / (2ε)              the low-rank gradient estimator
    lozo:    θ ← θ − η·g·U Vᵀ
    lozo-m:  M ← β·M + (1 − β)·g·U  (M ∈ R^{m×r});  θ ← θ − η·M Vᵀ
             when V is redrawn, M ← M·V_oldᵀ·V_new / n moves the momentum into the new subspace

1-D tensors (biases, norm weights) use plain Gaussian z through the kernels,
with a full-size momentum buffer for lozo-m, as in the public code. State:
V (n·r) per matrix, plus M (m·r) for lozo-m: O(r·(m + n)).

Choices, as in the public code: no 1/r normalisation (E_{U,V}[g·U Vᵀ] = r·∇L
to first order, so the rank scales the effective lr); the first momentum
step sets M = g·U (and buf = g·z) instead of (1 − β)·g·U. Differences from
it: a window starts per block at its first active step in that window
(identical under sampler=uniform, and well-defined when a sampler skips
blocks); weight decay is decoupled and skips biases and norm weights; the
Plan's per-block scale s and weight w multiply the direction (ε·s·U Vᵀ) and
the update (w·s) as for every estimator. The formulas above follow the
public code line by line.

The matrix passes are the kernels' low-rank pass
(:func:`zorun.kernels.lowrank_update_`, row-chunked ``addmm_`` calls into θ:
no m×n temporary is ever allocated), and restore and update are one pass:
θ ← k·θ + (k·r·s·U − η·…)·Vᵀ with k the decay factor. With
``estimator.stochastic_rounding`` the update rounds 16-bit matrices
stochastically (uniforms from the step's seed), as the kernels do the 1-D blocks.
lozo-m is LOZO's class with momentum (:class:`LOZOM` derives from :class:`LOZO`),
so both live here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from zorun import kernels
from zorun.estimators.base import ZOEstimator, ZOEstimatorConfig, copy_into, fp32_like, nbytes, register
from zorun.plan import Plan, mix_seed
from zorun.ranges import at_least, fraction

_U_STREAM, _V_STREAM, _ROUND_STREAM = 2, 3, 4  # sub-streams: mix_seed(seed, block, stream)
_generators: Dict[torch.device, torch.Tensor] = {}


@dataclass
class LOZOConfig(ZOEstimatorConfig):
    name: str = "lozo"
    rank: int = at_least(1, 2)  # r: U is m×r, V is n×r
    interval: int = at_least(1, 50, "steps a V is kept")  # ν: steps a V is kept before it is redrawn


@dataclass
class LOZOMConfig(LOZOConfig):
    name: str = "lozo-m"
    beta1: float = fraction(0.9)  # momentum of the low-rank M


def _gaussian(rows: int, cols: int, seed: int, device: torch.device) -> torch.Tensor:
    if device not in _generators:
        _generators[device] = torch.Generator(device=device)
    gen = _generators[device].manual_seed(seed)
    return torch.randn(rows, cols, generator=gen, device=device, dtype=torch.float32)


def _subset(plan: Plan, rows: List[int]) -> Plan:
    """The same Plan restricted to some of its active blocks (z depends on (seed, block) only)."""
    idx = torch.tensor(rows, dtype=torch.long)
    pick = lambda t: None if t is None else t[idx]  # noqa: E731
    return dataclasses.replace(plan, blocks=plan.blocks[idx], scale=pick(plan.scale), weight=pick(plan.weight))


@register(LOZOConfig)
class LOZO(ZOEstimator):
    kernel_directions = False  # U·Vᵀ directions of its own: a Plan's mean and candidates mean nothing here

    def __init__(self, cfg, space):
        super().__init__(cfg, space)
        self.low_rank = [b.tensor.ndim >= 2 for b in space.blocks]
        self.v: List[Optional[torch.Tensor]] = [
            torch.zeros(b.numel // b.tensor.shape[0], cfg.rank, dtype=torch.float32, device=b.tensor.device)
            if lr else None for b, lr in zip(space.blocks, self.low_rank)]
        self.window = torch.full((len(space),), -1, dtype=torch.long)  # window of each block's current V

    @property
    def state_bytes(self) -> int:
        return nbytes(self.v)

    def _u(self, plan: Plan, b: int) -> torch.Tensor:
        t = self.space.blocks[b].tensor
        return _gaussian(t.shape[0], self.cfg.rank, mix_seed(plan.seed, b, _U_STREAM), t.device)

    def _split(self, plan: Plan):
        """(plan of the active 1-D blocks or None, [(row, block)] of the active matrices)."""
        rows = list(enumerate(plan.blocks.tolist()))
        dense = [i for i, b in rows if not self.low_rank[b]]
        return (_subset(plan, dense) if dense else None), [(i, b) for i, b in rows if self.low_rank[b]]

    def _keep(self, b: int, decay: float) -> float:
        return 1.0 - decay if self.space.blocks[b].decay else 1.0

    def _rounding(self, plan: Plan, b: int) -> Optional[torch.Generator]:
        """The uniforms of block b's stochastic rounding in this update (None: round to nearest)."""
        if not self.stochastic:
            return None
        device = self.space.blocks[b].tensor.device
        return torch.Generator(device=device).manual_seed(mix_seed(plan.seed, b, _ROUND_STREAM))

    def begin(self, plan):
        window = self.steps // self.cfg.interval
        for b in plan.blocks.tolist():
            if self.low_rank[b] and int(self.window[b]) != window:
                new = _gaussian(*self.v[b].shape, mix_seed(plan.seed, b, _V_STREAM), self.v[b].device)
                self.new_subspace(b, new)
                self.v[b].copy_(new)
                self.window[b] = window

    def new_subspace(self, b: int, v_new: torch.Tensor) -> None:
        """Called before block b's V is replaced by v_new (lozo-m moves its momentum)."""

    def perturb(self, plan, alpha):
        dense, mats = self._split(plan)
        if dense is not None:
            kernels.perturb_(self.space, dense, alpha)
        for i, b in mats:
            kernels.lowrank_update_(self.space.blocks[b].tensor, self._u(plan, b), self.v[b],
                                    alpha=alpha * plan.scale_of(i))

    def restore(self, plan, restore):
        self.perturb(plan, restore)

    def apply(self, plan, query, restore, g, lr):
        decay = self.decay(lr) if query == 0 else 0.0
        coef = lr * g / self.cfg.q
        dense, mats = self._split(plan)
        if dense is not None:
            kernels.update_(self.space, dense, restore=restore, coef=coef, decay=decay, stochastic=self.stochastic)
        for i, b in mats:
            s, w, keep = plan.scale_of(i), plan.weight_of(i), self._keep(b, decay)
            # θ ← k·(θ + r·s·U Vᵀ) − η·g·w·s·U Vᵀ
            kernels.lowrank_update_(self.space.blocks[b].tensor, self._u(plan, b), self.v[b], keep=keep,
                                    alpha=keep * restore * s - coef * w * s, rounding=self._rounding(plan, b))

    def state_dict(self):
        return {**super().state_dict(), "v": self.v, "window": self.window}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        copy_into([t for t in self.v if t is not None], [t for t in state["v"] if t is not None])
        self.window.copy_(state["window"])


@register(LOZOMConfig)
class LOZOM(LOZO):
    """lozo-m: LOZO with its momentum M kept in the low-rank space (and a momentum buffer for 1-D blocks)."""

    one_query = "the momentum is updated from one low-rank estimate per step"

    def __init__(self, cfg, space):
        super().__init__(cfg, space)
        self.m = [torch.zeros(b.tensor.shape[0], cfg.rank, dtype=torch.float32, device=b.tensor.device)
                  if lr else None for b, lr in zip(space.blocks, self.low_rank)]
        dense = fp32_like(space)
        self.buf = [None if lr else t for t, lr in zip(dense, self.low_rank)]
        self.fresh = torch.ones(len(space), dtype=torch.bool)  # no momentum yet

    @property
    def state_bytes(self) -> int:
        return nbytes(self.v) + nbytes(self.m) + nbytes(self.buf)

    def new_subspace(self, b, v_new):
        if not self.fresh[b]:
            n = v_new.shape[0]
            self.m[b].copy_(self.m[b] @ (self.v[b].t() @ v_new) / n)  # M ← M·V_oldᵀ·V_new / n

    def apply(self, plan, query, restore, g, lr):
        beta, decay = self.cfg.beta1, self.decay(lr)
        dense, mats = self._split(plan)
        if dense is not None:
            first = self.fresh[dense.blocks]
            for sel, momentum, grad in ((first, 0.0, g), (~first, beta, (1.0 - beta) * g)):
                rows = sel.nonzero().flatten().tolist()
                if rows:
                    kernels.update_momentum_(self.space, _subset(dense, rows), restore=restore, grad=grad, lr=lr,
                                             momentum=momentum, buf=self.buf, decay=decay, stochastic=self.stochastic)
        for i, b in mats:
            s, w, keep = plan.scale_of(i), plan.weight_of(i), self._keep(b, decay)
            u = self._u(plan, b)
            c = g * w * s
            if self.fresh[b]:
                self.m[b].copy_(u).mul_(c)
            else:
                self.m[b].mul_(beta).add_(u, alpha=(1.0 - beta) * c)
            # θ ← k·(θ + r·s·U Vᵀ) − η·M Vᵀ = k·θ + (k·r·s·U − η·M)·Vᵀ
            kernels.lowrank_update_(self.space.blocks[b].tensor, u.mul_(keep * restore * s).sub_(self.m[b], alpha=lr),
                                    self.v[b], keep=keep, rounding=self._rounding(plan, b))
        self.fresh[plan.blocks] = False

    def state_dict(self):
        return {**super().state_dict(), "m": self.m, "buf": self.buf, "fresh": self.fresh}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        copy_into([t for t in self.m if t is not None], [t for t in state["m"] if t is not None])
        copy_into([t for t in self.buf if t is not None], [t for t in state["buf"] if t is not None])
        self.fresh.copy_(state["fresh"])
