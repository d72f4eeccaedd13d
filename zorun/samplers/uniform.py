"""sampler=uniform: isotropic Gaussian over every trainable block. With estimator=mezo, this is MeZO."""

from __future__ import annotations

from zorun.plan import Plan
from zorun.samplers.base import Sampler


class UniformSampler(Sampler):
    name = "uniform"

    def plan(self, step: int) -> Plan:
        return Plan(seed=self.step_seed(step), blocks=self.space.all_blocks())
