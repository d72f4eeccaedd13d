"""estimator=hizoo: ZO-SGD preconditioned by a diagonal Hessian estimate (Zhao et al., ICLR 2025).

"Second-Order Fine-Tuning without Pain for LLMs: A Hessian Informed
Zeroth-Order Optimizer" (arXiv:2402.15173), public code Yanjun-Zhao/HiZOO
(``zo_Hessian_step_update`` in trainer.py). The paper's Σ is the inverse
Hessian; here H = Σ^{-1} is the diagonal Hessian estimate, kept per element
in fp32 and initialised to 1 (Σ_0 = I). Per step, u = z ~ N(0, I):

    L0 = L(θ);  L± = L(θ ± ε·Σ_t^{1/2}·z)                  three forward passes
    Ĥ  = |L+ + L− − 2·L0| / (2ε²) · diag(Σ_t^{-1/2} z zᵀ Σ_t^{-1/2}) = c·H_t·z²
    H_{t+1} = (1 − α)·H_t + α·Ĥ                              EMA, α = hessian_smooth
    θ_{t+1} = θ_t − η·(L+ − L−)/(2ε) · Σ_{t+1}^{1/2}·z       (the updated H, as in the code)

with Σ^{1/2}z = z/√H. On a quadratic with diagonal Hessian A the expected
Ĥ is A + ½·H·tr(A/H), whose fixed point is H = (1 + d/2)·A: the estimate is
proportional to the true diagonal, so Σ^{1/2} is a correct preconditioner up
to a global factor that the learning rate absorbs (tests check this).

A Plan's per-block scale s and weight w enter as everywhere else: the
perturbation is ε·s·z/√H, Ĥ is divided by s² (the second difference was taken
at ε·s), and the update is multiplied by w·s.

Deviations from the public code, on purpose: weight decay is decoupled and
skips biases and norm weights (the code decays every tensor); no fourth
forward pass after the update (the code's ``loss_out``, used only for
logging; the step's loss here is L0); H is fp32 whatever θ's dtype; z comes
from the per-block counter-keyed generator, not torch's global seed. The
public script's default α is 0 (``constant0``), its README uses 1e-8.

The passes are the kernels' hizoo pass (:func:`zorun.kernels.update_hizoo_`):
z regenerated from the Plan's seed and scaled by 1/√H per element, H read
(and in the update, its EMA written) in the same pass, so memory stays at
model + H, and the update rounds 16-bit θ stochastically like every ZO
estimator's (``estimator.stochastic_rounding``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from zorun import kernels
from zorun.errors import ConfigError
from zorun.estimators.base import Estimator, StepResult, ZOEstimatorConfig, copy_into, fp32_like, nbytes, register
from zorun.ranges import between


@dataclass
class HiZOOConfig(ZOEstimatorConfig):
    name: str = "hizoo"
    # α: EMA rate of the diagonal Hessian estimate (public script: 0 or 1e-8)
    hessian_smooth: float = between(0, 1, 1e-6, "the EMA rate of the Hessian estimate")


@register(HiZOOConfig)
class HiZOO(Estimator):
    """Its own three-pass step, so an Estimator with the ZO schema rather than a ZOEstimator (whose probing
    loop it does not use)."""

    passes_per_step = 3

    @classmethod
    def refuse(cls, cfg) -> None:
        if cfg.one_sided:
            raise ConfigError("estimator=hizoo needs L(θ+εz) and L(θ−εz) for its curvature estimate; "
                              "set estimator.one_sided=false")
        if cfg.q != 1:
            raise ConfigError(f"estimator=hizoo supports estimator.q=1 only (each query would move the "
                              f"curvature estimate and θ between probes that share L0); got q={cfg.q}")

    def __init__(self, cfg, space):
        super().__init__(cfg, space)
        self.h = fp32_like(space, fill=1.0)  # H_0 = 1, i.e. Σ_0 = I

    @property
    def state_bytes(self) -> int:
        return nbytes(self.h)

    def step(self, plan, loss, lr, clock) -> StepResult:
        eps = self.cfg.eps
        with clock("forward"):
            l0 = loss()
        if not math.isfinite(l0):
            return StepResult(l0, float("nan"), 1, finite=False)
        with clock("perturb"):
            kernels.update_hizoo_(self.space, plan, restore=eps, coef=0.0, h=self.h)
        with clock("forward"):
            lp = loss()
        with clock("perturb"):
            kernels.update_hizoo_(self.space, plan, restore=-2 * eps, coef=0.0, h=self.h)
        with clock("forward"):
            lm = loss()
        if not (math.isfinite(lp) and math.isfinite(lm)):
            with clock("update"):
                kernels.update_hizoo_(self.space, plan, restore=eps, coef=0.0, h=self.h)
            return StepResult(float("nan"), float("nan"), 3, finite=False)
        g = (lp - lm) / (2 * eps)
        curvature = abs(lp + lm - 2 * l0) / (2 * eps * eps)
        with clock("update"):  # θ ← k·(θ + ε·s·z/√H_t); H_{t+1}; θ −= η·g·w·s·z/√H_{t+1}
            kernels.update_hizoo_(self.space, plan, restore=eps, coef=lr * g, h=self.h,
                                  smooth=self.cfg.hessian_smooth, curvature=curvature,
                                  decay=lr * self.cfg.weight_decay, stochastic=self.stochastic)
        self.steps += 1
        return StepResult(l0, g, 3, extras={"loss_plus": lp, "loss_minus": lm, "curvature": curvature})

    def state_dict(self):
        return {**super().state_dict(), "h": self.h}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        copy_into(self.h, state["h"])
