"""estimator=zo-sign: ZO-SGD on the sign of the projected gradient, θ −= η·sign(g)·z.

zorun's rule: the step length along z no longer depends on
|g|, which tames the heavy tails of the SPSA estimate. (ZO-signSGD, Liu et
al. 2019, instead takes the elementwise sign of ĝ = g·z, i.e. sign(g)·sign(z);
that needs sign(z) inside the kernel pass and is not what this estimator
does.) Queries are applied one after the other,
each with weight 1/q; weight decay once per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from zorun import kernels
from zorun.estimators.base import ZOEstimator, ZOEstimatorConfig, register


@dataclass
class ZOSignConfig(ZOEstimatorConfig):
    """MeZO's fields; a schema of its own for the option's name."""

    name: str = "zo-sign"


@register(ZOSignConfig)
class ZOSign(ZOEstimator):
    def apply(self, plan, query, restore, g, lr):
        sign = math.copysign(1.0, g) if g != 0 else 0.0
        kernels.update_(self.space, plan, restore=restore, coef=lr * sign / self.cfg.q,
                        decay=self.decay(lr) if query == 0 else 0.0, stochastic=self.stochastic)
