"""estimator=mezo: ZO-SGD with SPSA (Malladi et al. 2023), restore and update fused.

Two-sided, per query j with seed s_j:
    θ += εz; L+ = L(θ); θ −= 2εz; L− = L(θ); g_j = (L+ − L−)/(2ε)
    θ ← (1 − ηλ)(θ + εz) − (η·g_j/q)·z                      (one pass: restore + update)
One-sided: L0 = L(θ) once per step, then per query θ += εz; L+ = L(θ);
g_j = (L+ − L0)/ε; θ ← (1 − ηλ)(θ − εz) − (η·g_j/q)·z.
Queries are applied one after the other, so memory stays at inference level;
weight decay is applied once per step (with the first query's pass).
"""

from __future__ import annotations

import math

from zorun import kernels
from zorun.estimators.base import Estimator, StepResult
from zorun.timing import Clock


class MeZO(Estimator):
    name = "mezo"

    @property
    def passes_per_step(self) -> int:  # type: ignore[override]
        q = self.cfg.q
        return q + 1 if self.cfg.one_sided else 2 * q

    def step(self, plan, loss, lr: float, clock: Clock) -> StepResult:
        eps, q = self.cfg.eps, self.cfg.q
        decay = lr * self.cfg.weight_decay
        passes, grads, losses = 0, [], []
        base = None
        if self.cfg.one_sided:
            with clock("forward"):
                base = loss()
            passes += 1
            if not math.isfinite(base):
                return StepResult(base, 0.0, passes, finite=False)
        for j in range(q):
            pj = plan.for_query(j)
            with clock("perturb"):
                kernels.perturb_(self.space, pj, eps)
            with clock("forward"):
                lp = loss()
            passes += 1
            if self.cfg.one_sided:
                lm, restore, g = base, -eps, (lp - base) / eps
            else:
                with clock("perturb"):
                    kernels.perturb_(self.space, pj, -2 * eps)
                with clock("forward"):
                    lm = loss()
                passes += 1
                restore, g = eps, (lp - lm) / (2 * eps)
            if not (math.isfinite(lp) and math.isfinite(lm)):
                with clock("update"):
                    kernels.update_(self.space, pj, restore=restore, coef=0.0)
                return StepResult(float("nan"), float("nan"), passes, finite=False)
            with clock("update"):
                kernels.update_(self.space, pj, restore=restore, coef=lr * g / q,
                                decay=decay if j == 0 else 0.0)
            grads.append(g)
            losses.append((lp + lm) / 2 if not self.cfg.one_sided else base)
        return StepResult(sum(losses) / q, sum(grads) / q, passes,
                          extras={"loss_plus": lp, "loss_minus": lm})
