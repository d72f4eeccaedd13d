"""estimator=fo-adam: backpropagation with torch.optim.AdamW, MeZO's "FT" rows.

Weight decay is decoupled like the ZO estimators' and skips biases and norm
weights; the two moments are the optimizer's state. The step itself is
:class:`~zorun.estimators.first_order.FirstOrder`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zorun.estimators.base import AdamOptions, EstimatorConfig, register
from zorun.estimators.first_order import FirstOrder, MixedPrecision
from zorun.ranges import at_least


@dataclass
class FOAdamConfig(AdamOptions, EstimatorConfig):
    name: str = "fo-adam"
    max_grad_norm: float = at_least(0, 0.0, "0: no clip")  # clip the gradient's global norm to this (0: no clip)
    mixed_precision: MixedPrecision = MixedPrecision.none


@register(FOAdamConfig)
class FOAdam(FirstOrder):
    def make_optimizer(self, groups):
        return torch.optim.AdamW(groups, lr=float(self.cfg.lr), betas=(self.cfg.beta1, self.cfg.beta2),
                                 eps=float(self.cfg.adam_eps))
