"""The sampler interface: decide each step's Plan, learn from its result."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from omegaconf import DictConfig

from zorun.estimators.base import StepResult
from zorun.params import ParamSpace
from zorun.plan import Plan, mix_seed


class Sampler:
    """Samplers never touch parameters; the kernels execute their Plans."""

    name = "base"

    def __init__(self, cfg: DictConfig, space: ParamSpace, seed: int):
        self.cfg = cfg
        self.space = space
        self.seed = seed

    def step_seed(self, step: int) -> int:
        return mix_seed(self.seed, step)

    def plan(self, step: int) -> Plan:
        raise NotImplementedError

    def observe(self, plan: Plan, result: StepResult) -> None:
        """Learn from the step's outcome (bandit rewards, policy updates); default: nothing."""

    def log_record(self) -> Dict[str, Any]:
        """Per-step scalars for metrics.jsonl; default: none."""
        return {}

    def open_log(self, out_dir: Path) -> None:
        """Start a per-step log of the sampler's own in the run directory (default: none)."""

    def close(self) -> None:
        """Flush and close what open_log opened."""

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass
