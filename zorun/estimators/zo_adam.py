"""estimator=zo-adam: Adam moments fed with the SPSA estimate ĝ = g·z (ZO-Bench, Zhang et al. 2024).

    m ← β1·m + (1 − β1)·ĝ;  v ← β2·v + (1 − β2)·ĝ²
    θ ← (1 − ηλ)θ − η·(m/(1 − β1^t)) / (sqrt(v/(1 − β2^t)) + ε_adam)

as torch.optim.AdamW (torch.optim.Adam when λ = 0). m and v are two fp32
copies of the trainable parameters; the kernel regenerates z and updates m, v
and θ in one pass (update_adam_). t counts the steps each block was active,
so bias correction stays right when a sampler skips blocks; inactive blocks'
moments are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zorun import kernels
from zorun.estimators.base import (AdamOptions, ZOEstimator, ZOEstimatorConfig, copy_into, fp32_like, nbytes,
                                   register)


@dataclass
class ZOAdamConfig(AdamOptions, ZOEstimatorConfig):
    name: str = "zo-adam"


@register(ZOAdamConfig)
class ZOAdam(ZOEstimator):
    one_query = "v needs the square of the averaged estimate, i.e. a full-size buffer for it"

    def __init__(self, cfg, space):
        super().__init__(cfg, space)
        self.m = fp32_like(space)
        self.v = fp32_like(space)
        self.t = torch.zeros(len(space), dtype=torch.long)  # active steps per block

    @property
    def state_bytes(self) -> int:
        return nbytes(self.m) + nbytes(self.v)

    def apply(self, plan, query, restore, g, lr):
        self.t[plan.blocks] += 1
        kernels.update_adam_(self.space, plan, restore=restore, grad=g, lr=lr, m=self.m, v=self.v,
                             step=self.t[plan.blocks], betas=(self.cfg.beta1, self.cfg.beta2),
                             eps=self.cfg.adam_eps, decay=self.decay(lr), stochastic=self.stochastic)

    def state_dict(self):
        return {**super().state_dict(), "m": self.m, "v": self.v, "t": self.t}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        copy_into(self.m, state["m"])
        copy_into(self.v, state["v"])
        self.t.copy_(state["t"])
