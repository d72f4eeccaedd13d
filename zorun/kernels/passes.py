"""What one kernel pass does, independent of the backend that executes it.

Every pass walks the active blocks b of a Plan once, regenerates z_b from
(plan.seed, b, element) and, in fp32, computes

    x  = keep_b·(θ_b + a_b·z_b + am_b·μ_b)            restore (or perturb) and decay
    plain:     θ_b ← x − (c_b·z_b + cm_b·μ_b)
    momentum:  buf_b ← β·buf_b + c_b·z_b + cm_b·μ_b;  θ_b ← x − η·buf_b
    adam:      ĝ = c_b·z_b + cm_b·μ_b
               m_b ← β1·m_b + (1 − β1)·ĝ;  v_b ← β2·v_b + (1 − β2)·ĝ²
               θ_b ← x − η·(m_b / bc1_b) / (sqrt(v_b / bc2_b) + ε_adam)

then stores θ_b in its own dtype (round to nearest, or stochastically). The
per-block numbers come from the Plan (scale s_b, weight w_b) and the call:
a_b = restore·s_b, keep_b = 1 − decay for decayed blocks (else 1),
c_b = coef·w_b·s_b, bc1_b = 1 − β1^t_b, bc2_b = 1 − β2^t_b, am_b = restore,
cm_b = coef·w_b. μ_b is the Plan's mean (LDSD), read only for blocks that
have one: the direction is then μ_b + s_b·z_b, one fused pass, no temporary.
The accumulate pass leaves θ alone and adds c_b·z_b to a state tensor
(LDSD's REINFORCE step on μ, which needs z alone, not the direction).
Both backends take these rows from :func:`coefficients`, so they cannot disagree on the algebra.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch

from zorun.params import ParamSpace
from zorun.plan import Plan

PLAIN, MOMENTUM, ADAM, ACCUMULATE = 0, 1, 2, 3
NUM_COEFS = 7  # a, keep, c, bc1, bc2, am, cm per active block

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
    # state tensors indexed by block id: (buf,) for momentum, (m, v) for adam, (target,) for accumulate;
    # fp32, θ's shape
    states: Tuple[Sequence[Optional[torch.Tensor]], ...] = ()
    stochastic: bool = False  # stochastic rounding when θ is 16-bit


def coefficients(space: ParamSpace, plan: Plan, restore: float, coef: float, decay: float,
                 p: Pass, step: StepArg = 1) -> List[List[float]]:
    """One row [a, keep, c, bc1, bc2, am, cm] per active block, as described in the module doc.

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
             1.0 - p.beta1 ** t, 1.0 - p.beta2 ** t, restore, coef * w]
            for b, s, w, t in zip(blocks, scale, weight, steps)]


def means_of(plan: Plan, p: Pass) -> Optional[Sequence[Optional[torch.Tensor]]]:
    """The Plan's mean as the pass uses it: None for an accumulate pass, which writes z alone."""
    return None if p.mode == ACCUMULATE else plan.mean


def check_states(space: ParamSpace, plan: Plan, p: Pass) -> None:
    """Refuse missing or mis-shaped state (and mean) tensors before any parameter is written."""
    for states in p.states:
        for b in plan.blocks.tolist():
            _check(space, b, states[b], "state")
    mean = means_of(plan, p)
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
