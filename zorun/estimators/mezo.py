"""estimator=mezo: ZO-SGD with SPSA (Malladi et al. 2023), restore and update fused.

Per query j (probing in :class:`~zorun.estimators.base.ZOEstimator`), one pass:
    θ ← (1 − ηλ)(θ + r·z) − (η·g_j/q)·z        r = ε (two-sided) or −ε (one-sided)
Queries are applied one after the other, so memory stays at inference level;
weight decay is applied once per step (with the first query's pass).
"""

from __future__ import annotations

from zorun import kernels
from zorun.estimators.base import ZOEstimator, ZOEstimatorConfig, register


@register(ZOEstimatorConfig)
class MeZO(ZOEstimator):
    def apply(self, plan, query, restore, g, lr):
        kernels.update_(self.space, plan, restore=restore, coef=lr * g / self.cfg.q,
                        decay=self.decay(lr) if query == 0 else 0.0, stochastic=self.stochastic)
