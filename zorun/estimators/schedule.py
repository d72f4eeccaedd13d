"""The learning rate of each step: constant, linear or cosine decay, after a linear warm-up.

One schedule drives every estimator, ZO and first-order alike, so a sweep
over estimators compares the same lr trajectory. The shapes follow the
Hugging Face schedulers (`get_{constant,linear,cosine}_schedule_with_warmup`)
that the MeZO, HiZOO and LOZO scripts use: during warm-up the lr grows as
lr·t/warmup (so step 0 takes no step, as there), then decays over the
remaining steps to ``min_lr_ratio``·lr at the end (linear, or half a cosine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum


class LRScheduleKind(str, Enum):
    """estimator.schedule: the shape after warm-up."""

    constant = "constant"
    linear = "linear"  # linear decay to min_lr_ratio·lr at the last step
    cosine = "cosine"  # half a cosine down to min_lr_ratio·lr


SCHEDULES = tuple(kind.value for kind in LRScheduleKind)


@dataclass(frozen=True)
class LRSchedule:
    lr: float
    total_steps: int
    kind: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0

    @classmethod
    def from_config(cls, est, total_steps: int) -> "LRSchedule":
        kind = str(getattr(est.schedule, "value", est.schedule))
        return cls(float(est.lr), int(total_steps), kind, int(est.warmup_steps), float(est.min_lr_ratio))

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown lr schedule {self.kind!r}; choose one of {', '.join(SCHEDULES)}")

    def factor(self, step: int) -> float:
        """lr(step)/lr for the 0-based step about to be taken."""
        if step < self.warmup_steps:
            return step / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        decay = 1.0 - progress if self.kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * decay

    def __call__(self, step: int) -> float:
        return self.lr * self.factor(step)
