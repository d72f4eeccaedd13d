"""Tasks: data, prompt templates, losses and metrics."""

from zorun.tasks.base import Example, Task
from zorun.tasks.registry import build_task

__all__ = ["Example", "Task", "build_task"]
