"""The estimator interface: one optimisation step given a Plan and a loss oracle."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict

from omegaconf import DictConfig

from zorun.params import ParamSpace
from zorun.timing import Clock


@dataclass
class StepResult:
    loss: float  # the step's training loss estimate (mean of the probes)
    grad: float  # projected gradient g (mean over queries)
    forward_passes: int
    finite: bool = True
    extras: Dict[str, Any] = field(default_factory=dict)  # e.g. per-query losses


LossFn = Callable[[], float]  # one no-grad forward on the step's batch


class Estimator:
    name = "base"
    passes_per_step = 2

    def __init__(self, cfg: DictConfig, space: ParamSpace):
        self.cfg = cfg
        self.space = space

    @property
    def state_bytes(self) -> int:
        """Extra memory the estimator keeps beyond the model (momentum, moments, ...)."""
        return 0

    def step(self, plan, loss: LossFn, lr: float, clock: Clock) -> StepResult:
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass
