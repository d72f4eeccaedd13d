"""The sampler interface: decide each step's Plan, learn from its result."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig

from zorun.estimators.base import StepResult
from zorun.params import ParamSpace
from zorun.plan import Plan, mix_seed
from zorun.tracking import MetricsWriter


class Sampler:
    """Samplers never touch parameters; the kernels execute their Plans."""

    name = "base"
    # True when a Plan carries sampler state the trajectory log does not hold (LDSD's mean): a replay
    # then rebuilds that state step by step through complete() and learn() (see zorun.replay).
    replays_state = False

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

    @property
    def state_bytes(self) -> int:
        """Memory the sampler keeps that grows with the model (LDSD's mean); summary.json adds it to the estimator's."""
        return 0

    def complete(self, plan: Plan) -> Plan:
        """A Plan read back from the trajectory log, with the state it was used with (replays_state only)."""
        return plan

    def learn(self, plan: Plan, result: StepResult) -> None:
        """observe() without logging: what a replay calls (replays_state only)."""

    def wants_gradient(self, step: int) -> bool:
        """Whether the run should compute the true gradient at this step for observe_gradient (diagnostics)."""
        return False

    def observe_gradient(self, grads: List[torch.Tensor]) -> None:
        """The mini-batch gradient ∇L at θ before the step, one tensor per block (only when wants_gradient)."""

    def log_record(self) -> Dict[str, Any]:
        """Per-step scalars for metrics.jsonl; default: none."""
        return {}

    log_name: Optional[str] = None  # a per-step JSONL log of the sampler's own in the run directory, if any
    log: Optional[MetricsWriter] = None

    def open_log(self, out_dir: Path) -> None:
        """Start the sampler's per-step log (rank 0 / the writing process only)."""
        if self.log_name is not None:
            self.log = MetricsWriter(Path(out_dir) / self.log_name)

    def close(self) -> None:
        """Flush and close what open_log opened."""
        if self.log is not None:
            self.log.close()
            self.log = None

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass
