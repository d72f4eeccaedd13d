"""In-context learning (MeZO's ICL baseline): N solved training examples before each eval prompt.

The demonstrations are the first N training examples. The training split is
already a seeded permutation, so they are the set MeZO samples with the same
seed, in the same order. Each shows its prompt with the gold continuation,
stripped; they are joined, and put before the prompt, with a blank line
(MeZO's separator for every task). Dev and test prompts get them; training
examples never do. The scorer truncates a prompt from the left to fit the
model's context, so the oldest demonstrations go first.
"""

from __future__ import annotations

from dataclasses import replace

from zorun.errors import ConfigError
from zorun.tasks.base import Example, Task

SEPARATOR = "\n\n"


def demonstration(ex: Example) -> str:
    return (ex.prompt + ex.completion).strip()


def with_demonstrations(task: Task, n: int) -> Task:
    if n > len(task.train):
        raise ConfigError(f"task.icl_demos={n} needs {n} training examples and task={task.name} has "
                          f"{len(task.train)}; lower task.icl_demos or raise task.num_train")
    context = SEPARATOR.join(demonstration(ex) for ex in task.train[:n])

    def prefixed(ex: Example) -> Example:
        return replace(ex, prompt=context + SEPARATOR + ex.prompt)

    return replace(task, dev=[prefixed(ex) for ex in task.dev], test=[prefixed(ex) for ex in task.test])
