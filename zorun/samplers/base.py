"""The sampler interface: decide each step's Plan, learn from its result; and the table of samplers.

Each ``samplers/<option>.py`` holds its config schema (whose ``name`` default
is the option's name and whose fields declare their ranges with
:mod:`zorun.ranges`), the combinations it refuses and its class, and adds
itself to :data:`SAMPLERS` with :func:`register`; importing
:mod:`zorun.samplers` imports them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, Type

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from zorun.errors import ConfigError
from zorun.estimators.base import Estimator, StepResult
from zorun.params import ParamSpace
from zorun.plan import Plan, mix_seed
from zorun.ranges import check_ranges
from zorun.tracking import MetricsWriter


@dataclass
class SamplerConfig:
    """Fields every sampler has; each sampler's schema adds its own (``/schema/sampler/<option>``)."""

    name: str = "uniform"


ConfigStore.instance().store(group="schema/sampler", name="base", node=SamplerConfig)

SAMPLERS: Dict[str, Type["Sampler"]] = {}  # option name -> class
# Options whose Plan is every block at scale 1 and weight 1: the only ones a first-order
# (gradient) estimator can honour, since it has no direction distribution to shape.
GRADIENT_SAMPLERS: Set[str] = set()


def register(schema: type, gradient_ok: bool = False) -> Callable[[Type["Sampler"]], Type["Sampler"]]:
    """Class decorator: sampler=<schema's name default> builds cls, whose check reads schema's ranges, and its YAML
    composes onto ``/schema/sampler/<name>``: the option is named once, in its schema."""

    def add(cls: Type[Sampler]) -> Type[Sampler]:
        cls.name, cls.schema = schema.name, schema
        SAMPLERS[cls.name] = cls
        if gradient_ok:
            GRADIENT_SAMPLERS.add(cls.name)
        ConfigStore.instance().store(group="schema/sampler", name=cls.name, node=schema)
        return cls

    return add


class Sampler:
    """Samplers never touch parameters; the kernels execute their Plans."""

    name = "base"
    schema: type = SamplerConfig  # register() sets the option's own

    @classmethod
    def check(cls, cfg: DictConfig) -> None:
        """Range checks of the `sampler` node that types cannot express (before any model loads): the ranges
        its schema's fields declare."""
        check_ranges(cls.schema, cfg, "sampler")

    @classmethod
    def refuse(cls, cfg: DictConfig, estimators: Mapping[str, Type[Estimator]]) -> None:
        """Raise ConfigError when this sampler cannot run with cfg's estimator (`estimators`: option -> class)."""
        if estimators[cfg.estimator.name].differentiable and cfg.sampler.name not in GRADIENT_SAMPLERS:
            raise ConfigError(f"estimator={cfg.estimator.name} uses exact gradients, so sampler={cfg.sampler.name}'s "
                              f"direction distribution means nothing to it; use sampler="
                              f"{' or '.join(sorted(GRADIENT_SAMPLERS))}, or a ZO estimator")

    @classmethod
    def plot_log(cls, log_path: Path, png_path: Path) -> Optional[Path]:
        """A figure of a finished run's `log_name` log for the sweep report, written to png_path; None: no figure."""
        return None
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
