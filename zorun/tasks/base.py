"""The task interface: a template turns records into Examples (prompt, candidates, gold).

Classification / multiple choice: ``candidates`` and ``label`` (index of the
gold candidate); scored by mean token log-likelihood of each candidate.
Generation: ``answers`` (references); scored by greedy decoding, F1 and EM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, NamedTuple, Optional

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
    def trains_on_candidates(self) -> bool:
        """Whether the training loss is the cross-entropy over the answer candidates (else the gold's LM loss)."""
        return self.type == "classification" and self.train_as_classification

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
TaskCheck = Callable[[DictConfig], None]


class Registered(NamedTuple):
    build: TaskBuilder
    check: Optional[TaskCheck]  # refuses a bad `task` node with a ConfigError, before any model loads


TASKS: Dict[str, Registered] = {}  # option name -> its module's builder and check


def register_task(name: str, check: Optional[TaskCheck] = None):
    """Decorator of a task module's builder: task.name=<name> builds with it (see zorun.tasks.registry)."""

    def deco(fn: TaskBuilder) -> TaskBuilder:
        TASKS[name] = Registered(fn, check)
        return fn

    return deco


def require_type(cfg: DictConfig, kind: str) -> None:
    """Refuse a task.type override that does not fit a task of this kind."""
    given = getattr(cfg.type, "value", str(cfg.type))
    if given != kind:
        raise ConfigError(f"task.type={given} does not fit task={cfg.name}, a {kind} task; drop the override")
