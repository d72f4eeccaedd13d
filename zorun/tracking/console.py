"""The rich console: a progress bar while training (terminals only) and a summary table."""

from __future__ import annotations

import sys
from typing import Any, Dict, Optional

from rich.console import Console as RichConsole
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return str(value)


class Console:
    def __init__(self, enabled: bool):
        self.rich = RichConsole()
        self.show_progress = enabled and sys.stdout.isatty()
        self._progress: Optional[Progress] = None
        self._task = None

    def start(self, total: int, description: str) -> None:
        if not self.show_progress:
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(), console=self.rich,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, loss="-")

    def advance(self, loss: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, loss=f"{loss:.4f}")

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
