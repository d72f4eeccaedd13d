"""In-context learning (MeZO's ICL baseline): N solved training examples before each eval prompt.

``task.icl_sampling=per_example`` (the default) is MeZO's ``icl.sh``: every
test example gets its own N demonstrations, drawn from the whole training
split of the benchmark with a seed of its own. The seeds are
``np.random.RandomState(task.seed).randint(0, 10000, num_test)`` and test
example i shows the first N records of the seeded permutation
``RandomState(seeds[i]).permutation(len(train split))``, which is what
MeZO's ``sample_train_sets`` draws (there with seed 0: task.seed=0 gives the
same demonstrations as MeZO). Dev examples continue the same stream of seeds
and never see their own record. Tasks without a hub split (synthetic,
local) draw from their training examples.

``task.icl_sampling=fixed`` shows one set to every prompt: the first N
training examples, i.e. MeZO's set for ``--train_set_seed task.seed``.

Each demonstration shows its prompt with the gold continuation, stripped;
they are joined, and put before the prompt, with a blank line (MeZO's
separator for every task). Training examples never get them. The scorer
truncates a prompt from the left to fit the model's context, so the oldest
demonstrations go first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, List, Optional, Sequence

import numpy as np
from omegaconf import DictConfig

from zorun.errors import ConfigError
from zorun.tasks.base import Example, Task

SEPARATOR = "\n\n"
SEED_RANGE = 10000  # MeZO draws each example's demonstration seed from [0, 10000)


@dataclass
class DemoPool:
    """The records demonstrations come from: the benchmark's whole training split, rendered on demand."""

    size: int
    render: Callable[[List[int]], List[Example]]
    dev_index: Optional[Sequence[int]] = None  # each dev example's own record in the pool, never its demonstration

    @classmethod
    def of(cls, examples: List[Example]) -> "DemoPool":
        return cls(len(examples), lambda indices: [examples[i] for i in indices])

    def draw(self, n: int, seed: int, exclude: Optional[int] = None) -> List[Example]:
        """The first n of the seeded permutation, skipping `exclude` (MeZO's sample_subset)."""
        order = np.random.RandomState(seed).permutation(self.size).tolist()[: n + 1]
        if exclude in order:
            order.remove(exclude)
        return self.render(order[:n])


def demonstration(ex: Example) -> str:
    return (ex.prompt + ex.completion).strip()


def prefixed(ex: Example, demos: List[Example]) -> Example:
    return replace(ex, prompt=SEPARATOR.join(demonstration(d) for d in demos) + SEPARATOR + ex.prompt)


def with_demonstrations(task: Task, cfg: DictConfig) -> Task:
    n, sampling = cfg.icl_demos, str(getattr(cfg.icl_sampling, "value", cfg.icl_sampling))
    if sampling == "fixed":
        if n > len(task.train):
            raise ConfigError(f"task.icl_demos={n} needs {n} training examples and task={task.name} has "
                              f"{len(task.train)}; lower task.icl_demos or raise task.num_train")
        demos = task.train[:n]
        return replace(task, dev=[prefixed(ex, demos) for ex in task.dev],
                       test=[prefixed(ex, demos) for ex in task.test])
    pool = task.demo_pool or DemoPool.of(task.train)
    if n > pool.size - (1 if task.dev and pool.dev_index is not None else 0):
        raise ConfigError(f"task.icl_demos={n} draws from {pool.size} training records of task={task.name}; "
                          f"lower task.icl_demos")
    seeds = np.random.RandomState(cfg.seed).randint(0, SEED_RANGE, len(task.test) + len(task.dev)).tolist()
    own = pool.dev_index if pool.dev_index is not None else [None] * len(task.dev)
    test = [prefixed(ex, pool.draw(n, seed)) for ex, seed in zip(task.test, seeds)]
    dev = [prefixed(ex, pool.draw(n, seed, exclude=i)) for ex, seed, i in zip(task.dev, seeds[len(task.test):], own)]
    return replace(task, dev=dev, test=test)
