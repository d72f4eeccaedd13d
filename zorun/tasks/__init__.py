"""Tasks: data, prompt templates, losses and metrics."""

from zorun.tasks.base import Example, Task, build_task
from zorun.tasks import analogy, vader  # noqa: F401,E402  (registers task=analogy and task=vader)

__all__ = ["Example", "Task", "build_task"]
