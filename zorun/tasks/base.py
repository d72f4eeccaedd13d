"""The task interface: a template turns records into Examples (prompt, candidates, gold).

Classification / multiple choice: ``candidates`` and ``label`` (index of the
gold candidate); scored by mean token log-likelihood of each candidate.
Generation: ``answers`` (references); scored by greedy decoding, F1 and EM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from omegaconf import DictConfig

from zorun.errors import ConfigError


@dataclass
class Example:
    prompt: str
    candidates: List[str] = field(default_factory=list)
    label: Optional[int] = None
    answers: List[str] = field(default_factory=list)


@dataclass
class Task:
    name: str
    type: str  # classification | generation
    train: List[Example]
    dev: List[Example]
    test: List[Example]
    train_as_classification: bool = True

    def split(self, name: str) -> List[Example]:
        return {"train": self.train, "dev": self.dev, "test": self.test}[name]


def split_examples(examples: List[Example], cfg: DictConfig) -> Dict[str, List[Example]]:
    """Shuffle with the task seed, then take test, dev and train, in that order, without overlap."""
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    pool = [examples[i] for i in order]
    n_test = min(cfg.num_test, len(pool))
    test, pool = pool[:n_test], pool[n_test:]
    n_dev = min(cfg.num_dev, len(pool))
    dev, pool = pool[:n_dev], pool[n_dev:]
    return {"train": pool[: cfg.num_train], "dev": dev, "test": test}


TaskBuilder = Callable[[DictConfig], Task]
_BUILDERS: Dict[str, TaskBuilder] = {}


def register_task(name: str):
    def deco(fn: TaskBuilder) -> TaskBuilder:
        _BUILDERS[name] = fn
        return fn

    return deco


def build_task(cfg: DictConfig) -> Task:
    from zorun.tasks import local, synthetic  # noqa: F401  (registration)

    if cfg.name not in _BUILDERS:
        raise ConfigError(f"task.name={cfg.name} is not implemented; available: {', '.join(sorted(_BUILDERS))}")
    task = _BUILDERS[cfg.name](cfg)
    if not task.train and cfg.num_train > 0:
        raise ConfigError(f"task={cfg.name} has no training examples left after the dev/test split; lower task.num_dev/num_test")
    return task
