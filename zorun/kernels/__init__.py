"""The only code that writes parameters in the ZO path.

For every active block b of a Plan (scale s_b, weight w_b), with z_b drawn
from (plan.seed, b, element) and regenerated, never stored:

    perturb_:          θ_b += α·s_b·z_b
    update_:           θ_b ← k_b·(θ_b + r·s_b·z_b) − c·w_b·s_b·z_b
    update_momentum_:  θ_b ← k_b·(θ_b + r·s_b·z_b);  buf_b ← μ·buf_b + g·w_b·s_b·z_b;  θ_b −= η·buf_b
    update_adam_:      θ_b ← k_b·(θ_b + r·s_b·z_b);  ĝ = g·w_b·s_b·z_b;
                       m_b ← β1·m_b + (1−β1)·ĝ;  v_b ← β2·v_b + (1−β2)·ĝ²;
                       θ_b −= η·(m_b/(1−β1^t)) / (sqrt(v_b/(1−β2^t)) + ε_adam)
    accumulate_:       into_b += c·w_b·s_b·z_b   (θ untouched)
    update_hizoo_:     θ_b ← k_b·(θ_b + r·s_b·z_b/√H_b);  H_b ← H_b·(1 − α + α·(κ/s_b²)·z_b²)  (α ≠ 0);
                       θ_b −= c·w_b·s_b·z_b/√H_b        (HiZOO's diagonal preconditioner H)

When the Plan carries a mean μ_b (LDSD's policy mean), every s_b·z_b above
except accumulate_'s stands for the whole direction μ_b + s_b·z_b, fused into
the same pass (no temporary of the direction).

with k_b = 1 − decay when block b decays (ParamSpace's ``decay`` flag; the
caller passes decay = η·λ), else 1. r (``restore``) undoes the last
perturbation in the same pass. Each is one pass over the active blocks (one
Triton launch per dtype and device, one numba call); inactive blocks, their θ and their
state, are not touched. State tensors are fp32, θ's shape, indexed by block
id. ``stochastic=True`` rounds 16-bit θ stochastically (unbiased), so updates
below half an ulp still move θ on average; fp32 θ is unaffected.
Backend choice: :func:`select` (``kernels=auto|triton|numba|torch``); :func:`z_chunks` gives the z a pass applies.
One pass draws no z: ``lowrank_update_`` (θ ← keep·θ + α·A·Vᵀ for one matrix θ), LOZO's low-rank
direction U·Vᵀ, a matmul rather than a stream (:mod:`zorun.kernels.lowrank`).
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch

from zorun.kernels.dispatch import BACKENDS, current, run, select, z_chunks
from zorun.kernels.lowrank import lowrank_update_
from zorun.kernels.passes import ACCUMULATE, ADAM, HIZOO, MOMENTUM, Pass, StepArg
from zorun.params import ParamSpace
from zorun.plan import Plan

__all__ = ["perturb_", "update_", "update_momentum_", "update_adam_", "update_hizoo_", "accumulate_", "select",
           "lowrank_update_", "current", "z_chunks", "BACKENDS"]


def perturb_(space: ParamSpace, plan: Plan, alpha: float) -> None:
    """θ_b += α·(s_b·z_b + μ_b) for every active block (μ_b = 0 without a mean)."""
    run(space, plan, restore=alpha, coef=0.0, decay=0.0)


def update_(space: ParamSpace, plan: Plan, restore: float, coef: float, decay: float = 0.0,
            stochastic: bool = False) -> None:
    """θ_b ← k_b·(θ_b + restore·s_b·z_b) − coef·w_b·s_b·z_b; coef = η·g for ZO-SGD."""
    run(space, plan, restore, coef, decay, Pass(stochastic=stochastic))


def update_momentum_(space: ParamSpace, plan: Plan, restore: float, grad: float, lr: float, momentum: float,
                     buf: Sequence[torch.Tensor], decay: float = 0.0, stochastic: bool = False) -> None:
    """buf_b ← μ·buf_b + g·w_b·s_b·z_b; θ_b ← k_b·(θ_b + restore·s_b·z_b) − η·buf_b."""
    run(space, plan, restore, grad, decay,
        Pass(mode=MOMENTUM, momentum=momentum, lr=lr, states=(buf,), stochastic=stochastic))


def update_adam_(space: ParamSpace, plan: Plan, restore: float, grad: float, lr: float,
                 m: Sequence[torch.Tensor], v: Sequence[torch.Tensor], step: StepArg,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, decay: float = 0.0,
                 stochastic: bool = False) -> None:
    """Adam on ĝ = g·w_b·s_b·z_b, bias-corrected with step t ≥ 1 (an int, or one per active block)."""
    run(space, plan, restore, grad, decay,
        Pass(mode=ADAM, lr=lr, beta1=betas[0], beta2=betas[1], adam_eps=eps, states=(m, v),
             stochastic=stochastic), step=step)


def update_hizoo_(space: ParamSpace, plan: Plan, restore: float, coef: float, h: Sequence[torch.Tensor],
                  smooth: float = 0.0, curvature: float = 0.0, decay: float = 0.0, stochastic: bool = False) -> None:
    """Along z/√H: θ_b ← k_b·(θ_b + restore·s_b·z_b/√H_b); H_b ← H_b·(1 − α + α·(κ/s_b²)·z_b²) when α = smooth ≠ 0
    (not for blocks with s_b = 0); θ_b −= coef·w_b·s_b·z_b/√H_b with the new H. coef = 0, α = 0: a perturbation."""
    run(space, plan, restore, coef, decay,
        Pass(mode=HIZOO, smooth=smooth, curvature=curvature, states=(h,), stochastic=stochastic))


def accumulate_(space: ParamSpace, plan: Plan, coef: float, into: Sequence[torch.Tensor]) -> None:
    """into_b += coef·w_b·s_b·z_b for every active block; θ is neither read nor written."""
    run(space, plan, 0.0, coef, 0.0, Pass(mode=ACCUMULATE, states=(into,)))
