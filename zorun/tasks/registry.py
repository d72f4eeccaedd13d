"""Option name -> task: every module of zorun/tasks is imported here, and the task modules register themselves.

A new task is one module with a :func:`~zorun.tasks.base.register_task` builder
(and, if its config can be wrong, a check) plus one YAML in conf/task/.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from omegaconf import DictConfig

from zorun.errors import ConfigError
from zorun.tasks.base import TASKS, Registered, Task
from zorun.tasks.icl import with_demonstrations

for _module in pkgutil.iter_modules([str(Path(__file__).parent)]):
    if _module.name != "registry":
        importlib.import_module(f"zorun.tasks.{_module.name}")


def registered(name: str) -> Registered:
    if name not in TASKS:
        raise ConfigError(f"task.name={name} is not implemented; available: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def check_task(cfg: DictConfig) -> None:
    """The task module's own checks of the `task` node (before any model loads)."""
    entry = registered(cfg.name)
    if entry.check is not None:
        entry.check(cfg)


def build_task(cfg: DictConfig) -> Task:
    check_task(cfg)
    task = registered(cfg.name).build(cfg)
    if not task.train and cfg.num_train > 0:
        raise ConfigError(f"task={cfg.name} has no training examples left after the dev/test split; lower task.num_dev/num_test")
    return with_demonstrations(task, cfg) if cfg.icl_demos else task
