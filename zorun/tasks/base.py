"""The task interface: a template turns records into Examples (prompt, candidates, gold).

Classification / multiple choice: ``candidates`` and ``label`` (index of the
gold candidate); scored by mean token log-likelihood of each candidate.
Generation: ``answers`` (references); scored by greedy decoding, F1 and EM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
from omegaconf import DictConfig

from zorun.errors import ConfigError


@dataclass
class Example:
    prompt: str
    candidates: List[str] = field(default_factory=list)
    label: Optional[int] = None  # the candidate training fits
    answers: List[str] = field(default_factory=list)  # generation: references for F1/EM
    gold: List[int] = field(default_factory=list)  # every correct candidate when several are (ReCoRD)
    target: Optional[str] = None  # generation: the text LM loss fits (default: the first answer)

    @property
    def completion(self) -> str:
        """The gold continuation of the prompt: what training fits and a demonstration shows."""
        if self.candidates:
            return self.candidates[self.label]
        return self.target if self.target is not None else self.answers[0]

    def is_correct(self, choice: int) -> bool:
        return choice in self.gold if self.gold else choice == self.label


@dataclass
class Task:
    name: str
    type: str  # classification | generation
    train: List[Example]
    dev: List[Example]
    test: List[Example]
    train_as_classification: bool = True
    demo_pool: Any = None  # where ICL draws demonstrations (zorun.tasks.icl.DemoPool); None: the training examples

    def split(self, name: str) -> List[Example]:
        return {"train": self.train, "dev": self.dev, "test": self.test}[name]

    @property
    def metric(self) -> str:
        """The dev metric that selects the best step."""
        return "f1" if self.type == "generation" else "accuracy"


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
    from zorun.tasks import local, protocol, synthetic  # noqa: F401  (registration)
    from zorun.tasks.icl import with_demonstrations

    if cfg.name not in _BUILDERS:
        raise ConfigError(f"task.name={cfg.name} is not implemented; available: {', '.join(sorted(_BUILDERS))}")
    task = _BUILDERS[cfg.name](cfg)
    if not task.train and cfg.num_train > 0:
        raise ConfigError(f"task={cfg.name} has no training examples left after the dev/test split; lower task.num_dev/num_test")
    return with_demonstrations(task, cfg) if cfg.icl_demos else task
