"""What one kernel pass does, independent of the backend that executes it.

Every pass walks the active blocks b of a Plan once, regenerates z_b from
(plan.seed, b, element) and, in fp32, computes

    x  = keep_b·(θ_b + a_b·z_b + am_b·μ_b)            restore (or perturb) and decay
    plain:     θ_b ← x − (c_b·z_b + cm_b·μ_b)
    momentum:  buf_b ← β·buf_b + c_b·z_b + cm_b·μ_b;  θ_b ← x − η·buf_b
    adam:      ĝ = c_b·z_b + cm_b·μ_b
               m_b ← β1·m_b + (1 − β1)·ĝ;  v_b ← β2·v_b + (1 − β2)·ĝ²
               θ_b ← x − η·(m_b / e1_b) / (sqrt(v_b / e2_b) + ε_adam)
    hizoo:     d = z_b / sqrt(H_b);  x = keep_b·(θ_b + a_b·d)
               H_b ← H_b·(e1_b + e2_b·z_b²)   (only when the pass updates H)
               θ_b ← x − c_b·z_b / sqrt(H_b)

then stores θ_b in its own dtype (round to nearest, or stochastically). The
per-block numbers come from the Plan (scale s_b, weight w_b) and the call:
a_b = restore·s_b, keep_b = 1 − decay for decayed blocks (else 1),
c_b = coef·w_b·s_b, am_b = restore, cm_b = coef·w_b, and two mode-specific
numbers e1_b, e2_b: Adam's bias corrections 1 − β1^t_b, 1 − β2^t_b; HiZOO's
EMA of its diagonal Hessian estimate, 1 − α and α·curvature/s_b² (1 and 0 for
a block with s_b = 0, whose curvature was not probed). μ_b is the Plan's
mean (LDSD), read only for blocks that have one: the direction is then
μ_b + s_b·z_b, one fused pass, no temporary (HiZOO takes none).
The accumulate pass leaves θ alone and adds c_b·z_b to a state tensor
(LDSD's REINFORCE step on μ, which needs z alone, not the direction).
Every backend takes these rows from :func:`coefficients`, so they cannot disagree on the algebra.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch

from zorun.params import ParamSpace
from zorun.plan import Plan

PLAIN, MOMENTUM, ADAM, ACCUMULATE, HIZOO = 0, 1, 2, 3, 4
NUM_COEFS = 7  # a, keep, c, e1, e2, am, cm per active block
NUM_HYPER = 6  # the pass-wide scalars of hyper()

StepArg = Union[int, torch.Tensor]


@dataclass(frozen=True)
class Pass:
    """The scalars shared by every block of one pass, and the state tensors it updates."""

    mode: int = PLAIN
    momentum: float = 0.0  # β, the momentum coefficient
    lr: float = 0.0  # η (momentum, adam)
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-8
    smooth: float = 0.0  # hizoo: α, the EMA rate of H (0: H is read, not written)
    curvature: float = 0.0  # hizoo: |L+ + L− − 2·L0| / (2ε²)
    # state tensors indexed by block id: (buf,) for momentum, (m, v) for adam, (target,) for accumulate,
    # (H,) for hizoo; fp32, θ's shape
    states: Tuple[Sequence[Optional[torch.Tensor]], ...] = ()
    stochastic: bool = False  # stochastic rounding when θ is 16-bit


def coefficients(space: ParamSpace, plan: Plan, restore: float, coef: float, decay: float,
                 p: Pass, step: StepArg = 1) -> List[List[float]]:
    """One row [a, keep, c, e1, e2, am, cm] per active block, as described in the module doc.

    Plain Python floats: a pass over a few tiny blocks must not pay for a dozen torch ops.
    """
    blocks = plan.blocks.tolist()
    n = len(blocks)
    scale = [1.0] * n if plan.scale is None else [float(x) for x in plan.scale.tolist()]
    weight = [1.0] * n if plan.weight is None else [float(x) for x in plan.weight.tolist()]
    steps = [float(step)] * n if isinstance(step, (int, float)) else [float(x) for x in torch.as_tensor(step).reshape(-1).tolist()]
    if len(steps) != n or min(steps, default=1.0) < 1:
        raise ValueError(f"step must be an int >= 1 or one value >= 1 per active block ({n}), got {step}")
    return [[restore * s, 1.0 - decay if space.blocks[b].decay else 1.0, coef * w * s,
             *_extras(p, s, t), restore, coef * w]
            for b, s, w, t in zip(blocks, scale, weight, steps)]


def _extras(p: Pass, s: float, t: float) -> Tuple[float, float]:
    """e1, e2 of a block with scale s and step t."""
    if p.mode == HIZOO:
        return (1.0 - p.smooth, p.smooth * p.curvature / (s * s)) if s != 0.0 else (1.0, 0.0)
    return 1.0 - p.beta1 ** t, 1.0 - p.beta2 ** t


def hyper(p: Pass) -> List[float]:
    """The pass-wide scalars, NUM_HYPER of them: momentum (β, η); adam (β1, 1 − β1, β2, 1 − β2, η, ε_adam);
    hizoo (1 if H is updated, else 0). 1 − β is rounded from its exact value, as torch.optim.Adam's is
    (computed in fp32 from a rounded 0.999 it is 1.3e-5 off)."""
    if p.mode == MOMENTUM:
        h = [p.momentum, p.lr]
    elif p.mode == ADAM:
        h = [p.beta1, 1.0 - p.beta1, p.beta2, 1.0 - p.beta2, p.lr, p.adam_eps]
    elif p.mode == HIZOO:
        h = [float(p.smooth != 0.0)]
    else:
        h = []
    return h + [0.0] * (NUM_HYPER - len(h))


def means_of(plan: Plan, p: Pass) -> Optional[Sequence[Optional[torch.Tensor]]]:
    """The Plan's mean as the pass uses it: None for an accumulate pass, which writes z alone."""
    return None if p.mode == ACCUMULATE else plan.mean


def check_states(space: ParamSpace, plan: Plan, p: Pass) -> None:
    """Refuse missing or mis-shaped state (and mean) tensors before any parameter is written."""
    for states in p.states:
        for b in plan.blocks.tolist():
            _check(space, b, states[b], "state")
    mean = means_of(plan, p)
    if mean is not None and p.mode == HIZOO and any(mean[b] is not None for b in plan.blocks.tolist()):
        raise ValueError("the hizoo pass takes no mean: its direction is z/sqrt(H)")
    if mean is not None:
        for b in plan.blocks.tolist():
            if mean[b] is not None:
                _check(space, b, mean[b], "mean")


def _check(space: ParamSpace, b: int, st: Optional[torch.Tensor], what: str) -> None:
    theta = space.blocks[b].tensor
    if (st is None or st.shape != theta.shape or st.dtype != torch.float32 or st.device != theta.device
            or not st.is_contiguous()):
        raise ValueError(f"{what} of block {b} ({space.blocks[b].name}) must be a contiguous float32 tensor of shape "
                         f"{tuple(theta.shape)} on {theta.device}, got {None if st is None else (st.dtype, tuple(st.shape), st.device)}")
