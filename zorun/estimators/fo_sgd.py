"""estimator=fo-sgd (and fo-sgd-teacher, the same estimator with PertNN's options): backpropagation with
torch.optim.SGD.

The memory upper bound of the ZO papers' tables and the teacher trajectory
of PertNN meta-training (momentum 0.8, max_grad_norm 1.0 there:
conf/estimator/fo-sgd-teacher.yaml). Weight decay is torch's classic L2 term
on the decayed tensors (the same as decoupled decay without momentum). The
step itself is :class:`~zorun.estimators.first_order.FirstOrder`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zorun.estimators.base import EstimatorConfig, register
from zorun.estimators.first_order import FirstOrder, MixedPrecision
from zorun.ranges import at_least, fraction


@dataclass
class FOSGDConfig(EstimatorConfig):
    name: str = "fo-sgd"
    momentum: float = fraction(0.0)
    # clip the gradient's global norm to this (0: no clip); PertNN's teacher uses 1.0
    max_grad_norm: float = at_least(0, 0.0, "0: no clip")
    mixed_precision: MixedPrecision = MixedPrecision.none


@register(FOSGDConfig)
class FOSGD(FirstOrder):
    def make_optimizer(self, groups):
        return torch.optim.SGD(groups, lr=float(self.cfg.lr), momentum=float(self.cfg.momentum))
