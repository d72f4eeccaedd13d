"""sampler=uniform: isotropic Gaussian over every trainable block. With estimator=mezo, this is MeZO.

It has no fields beyond the common schema, and it is the one sampler a
first-order estimator accepts: its Plan is every block at scale 1, weight 1.
"""

from __future__ import annotations

from zorun.plan import Plan
from zorun.samplers.base import Sampler, SamplerConfig, register


@register(SamplerConfig, gradient_ok=True)
class UniformSampler(Sampler):
    def plan(self, step: int) -> Plan:
        return Plan(seed=self.step_seed(step), blocks=self.space.all_blocks())
