"""Tasks: data, prompt templates, losses and metrics."""

from zorun.tasks.base import Example, Task, build_task

__all__ = ["Example", "Task", "build_task"]
