"""estimator=fo-adam: backpropagation with torch.optim.AdamW, MeZO's "FT" rows.

Weight decay is decoupled like the ZO estimators' and skips biases and norm
weights; the two moments are the optimizer's state. The step itself is
:class:`~zorun.estimators.first_order.FirstOrder`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zorun.estimators.base import EstimatorConfig, check_adam, register
from zorun.estimators.first_order import FirstOrder, MixedPrecision


@dataclass
class FOAdamConfig(EstimatorConfig):
    name: str = "fo-adam"
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float = 0.0  # clip the gradient's global norm to this (0: no clip)
    mixed_precision: MixedPrecision = MixedPrecision.none


@register(FOAdamConfig)
class FOAdam(FirstOrder):
    name = "fo-adam"

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        check_adam(cfg)

    def make_optimizer(self, groups):
        return torch.optim.AdamW(groups, lr=float(self.cfg.lr), betas=(self.cfg.beta1, self.cfg.beta2),
                                 eps=float(self.cfg.adam_eps))
