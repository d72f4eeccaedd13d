"""estimator=zo-sgd-momentum: heavy-ball momentum on the SPSA estimate ĝ = g·z.

    buf ← μ·buf + ĝ;   θ ← (1 − ηλ)θ − η·buf

as torch.optim.SGD(momentum=μ, dampening=0) with decoupled decay. buf is one
fp32 copy of the trainable parameters; the kernel regenerates z and updates
buf and θ in one pass (update_momentum_). With q queries, every query is
evaluated at the same θ: the first query's pass decays buf by μ and adds
g_0·z_0/q, later ones add g_j·z_j/q, and only the last pass moves θ, so buf
receives exactly the average of the q estimates. Blocks a sampler leaves
inactive keep their buf untouched (their momentum neither decays nor acts).
"""

from __future__ import annotations

from dataclasses import dataclass

from zorun import kernels
from zorun.estimators.base import ZOEstimator, ZOEstimatorConfig, copy_into, fp32_like, nbytes, register
from zorun.ranges import fraction


@dataclass
class ZOMomentumConfig(ZOEstimatorConfig):
    name: str = "zo-sgd-momentum"
    momentum: float = fraction(0.9)  # μ: buf ← μ·buf + g·z


@register(ZOMomentumConfig)
class ZOMomentum(ZOEstimator):
    def __init__(self, cfg, space):
        super().__init__(cfg, space)
        self.buf = fp32_like(space)

    @property
    def state_bytes(self) -> int:
        return nbytes(self.buf)

    def apply(self, plan, query, restore, g, lr):
        last = query == self.cfg.q - 1
        kernels.update_momentum_(self.space, plan, restore=restore, grad=g / self.cfg.q,
                                 lr=lr if last else 0.0, momentum=self.cfg.momentum if query == 0 else 1.0,
                                 buf=self.buf, decay=self.decay(lr) if last else 0.0, stochastic=self.stochastic)

    def state_dict(self):
        return {**super().state_dict(), "buf": self.buf}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        copy_into(self.buf, state["buf"])
