"""The rich console: progress bars while training and evaluating (terminals only) and a summary table.

Training shows steps, the recent loss, the last dev metric, elapsed time,
steps/s and the ETA; an evaluation shows examples scored with its own rate
and ETA, under the training bar when one is running. Long evaluations at real
shapes (minutes on CPU) are no longer silent, nor is a multirun's pre-flight.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, TypeVar

from rich.console import Console as RichConsole
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

T = TypeVar("T")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return str(value)


class RateColumn(ProgressColumn):
    """Items per second in the task's unit (steps/s, examples/s), from rich's moving speed estimate."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "it")
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.3g} {unit}/s" if speed else f"- {unit}/s", style="progress.data.speed")


@contextmanager
def preflight_progress(total: int) -> Iterator[Callable[[Iterable[T]], Iterator[T]]]:
    """The multirun pre-flight composes and checks every job before Hydra launches any (about half a second each,
    minutes for a large grid on a loaded machine): a bar of jobs checked on a terminal, erased when done, so a
    refused grid still ends in one error line (and nothing is added to logs). Yields a wrapper for the loop over
    the jobs that counts each one done."""
    console = RichConsole(stderr=True)
    if total <= 1 or not console.is_terminal:
        yield iter
        return
    with Progress(TextColumn("[bold]zorun: pre-flight"), BarColumn(bar_width=24), MofNCompleteColumn(),
                  TextColumn("jobs checked"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("pre-flight", total=total)

        def counted(jobs: Iterable[T]) -> Iterator[T]:
            for job in jobs:
                yield job
                progress.advance(task)

        yield counted


class Console:
    def __init__(self, enabled: bool):
        self.rich = RichConsole()
        self.show_progress = enabled and sys.stdout.isatty()
        self._progress: Optional[Progress] = None
        self._task = None
        self._dev = ""

    def _new_progress(self, transient: bool) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), RateColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=self.rich, transient=transient,
        )

    def start(self, total: int, description: str, completed: int = 0) -> None:
        """The training bar; `completed` steps are already done (a resumed run)."""
        if not self.show_progress:
            return
        self._progress = self._new_progress(transient=False)
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, completed=completed, unit="steps",
                                             info=self._info("-"))

    def _info(self, loss: str) -> str:
        return f"loss {loss}" + (f" · dev {self._dev}" if self._dev else "")

    def advance(self, loss: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, info=self._info(f"{loss:.4f}"))

    def dev(self, metric: str, value: float) -> None:
        """The last dev result, shown on the training bar from now on."""
        self._dev = f"{metric} {value:.3g}"

    @contextmanager
    def evaluation(self, split: str, total: int) -> Iterator[Callable[[int], None]]:
        """A bar of examples scored; yields the callback that advances it by a batch's size."""
        if not self.show_progress or total == 0:
            yield lambda n: None
            return
        own = self._progress is None  # before training: a bar of its own, gone when done
        progress = self._new_progress(transient=True) if own else self._progress
        if own:
            progress.start()
        task = progress.add_task(f"eval {split}", total=total, unit="examples", info="")
        try:
            yield lambda n: progress.update(task, advance=n)
        finally:
            if own:
                progress.stop()
            else:
                progress.remove_task(task)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def summary(self, summary: Dict[str, Any], out_dir: str) -> None:
        table = Table(title=f"zorun · {summary.get('status')} · {out_dir}", show_header=False)
        for key in ("model", "task", "estimator", "sampler", "seed", "steps", "forward_passes",
                    "train_loss", "dev_initial", "dev", "test", "wall_s", "time_s", "error"):
            if summary.get(key) is not None:
                table.add_row(key, _fmt(summary[key]))
        self.rich.print(table)
