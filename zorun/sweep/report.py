"""zorun-report: a sweep directory as the table a paper would print, plus plots.

Reads only what every job writes (``.hydra/``, ``summary.json``,
``metrics.jsonl``), so it works the same after a local or a SLURM multirun.
Rows are model x task, columns the methods (see
:func:`zorun.identity.method_label`). Within a cell, the jobs that differ only
by seed (the run seed or the data draw, task.seed) form one hyperparameter
setting. Each job contributes its results at the step its run selected on
dev (summary.json's ``selected``: budget.select, MeZO's best dev loss by
default); the setting with the best mean dev metric there is chosen (dev
only, never test) and its test metric is shown as mean ± std (n) over seeds
(the mean alone for one seed). Failed jobs are listed with their error line.
Besides report.md, the CSV files and PNG plots, ``report.html`` is an
interactive dashboard of the same results (:mod:`zorun.sweep.dashboard`).

A directory holds one sweep: the jobs of one launch command (each job's
``sweep.json``) and its relaunches. One that holds several (another grid
pointed at it) is split, a report per sweep in ``report/<sweep>/``, unless
--merge asks for one; two runs of one configuration in a directory (two
launches that collided) are refused, since their seeds would count twice.

The jobs and their aggregation are :mod:`zorun.sweep.results`; a
:class:`Report` adds the outputs: report.md, the CSV files, the plots,
report.html and the console table.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from rich.console import Console
from rich.table import Table

from zorun.sweep.dashboard import write_dashboard
from zorun.sweep.plots import plot_all
from zorun.sweep.results import Cell, Job, Results, check_one_launch, find_jobs, primary_metric
from zorun.sweep.time_to_target import COLUMNS as TARGET_COLUMNS
from zorun.sweep.time_to_target import Target

MARKDOWN_METHODS = 8  # more methods than this: report.md lists a row per method (a column per model x task)


@dataclass
class Report(Results):
    """The results as report.md, CSV files, PNG plots, report.html and a console table."""

    plots: List[Path] = field(default_factory=list)  # the PNG files write() drew

    def grid(self, by_method: bool) -> Tuple[List[str], List[List[Tuple[str, bool]]]]:
        """The results table as (header, rows of (text, best)): rows model x task and a column per
        method (the paper layout), or, for grids too wide to read that way, a row per method."""
        not_applicable = self.not_applicable

        def cell(row: Dict[str, Cell], method: str) -> Tuple[str, bool]:
            if method in row:
                return row[method].text(), row[method].best
            return ("n/a" if method in not_applicable else "–"), False

        if not by_method:
            return (["model", "task", *self.methods],
                    [[(model, False), (task, False), *[cell(row, m) for m in self.methods]]
                     for (model, task), row in self.cells.items()])
        return (["method", *[f"{model} / {task}" for model, task in self.cells]],
                [[(m, False), *[cell(row, m) for row in self.cells.values()]] for m in self.methods])

    def markdown(self) -> str:
        lines = [f"# zorun report: {self.root}", "",
                 f"test {self.metric} (%) at the step each run selected on dev (budget.select; MeZO's: best dev "
                 "loss), mean ± std (n) over seeds; hyperparameters selected on dev; * best for its model and task", ""]
        if self.sweep is not None:
            lines[1:1] = ["", f"sweep: `{self.sweep}` (one of several launch commands in this directory)"]
        if self.cells:
            header, rows = self.grid(by_method=len(self.methods) > MARKDOWN_METHODS)
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(text.replace(" *", " **\\***") if best else text for text, best in row) + " |"
                      for row in rows]
        else:
            lines.append("No completed job reports a test metric.")
        if self.target_rows:
            lines += ["", f"## Time to target: {self.target}", "",
                      "steps and train_s (training seconds without set-up, evaluation and checkpoints) at the "
                      "first logged point that reaches the target, mean ± std over the runs that reached it; "
                      "speedup = the base method's train_s / this method's (all runs must reach it)", "",
                      "| " + " | ".join(TARGET_COLUMNS) + " |", "|" + "---|" * len(TARGET_COLUMNS)]
            lines += ["| " + " | ".join(row.cells()) + " |" for row in self.target_rows]
        if self.failed:
            lines += ["", f"## Failed jobs ({len(self.failed)})", ""]
            lines += [f"- `{job.dir.name}`: {job.status}: {job.error}" for job in self.failed]
        if self.not_applicable:
            lines += ["", "## Not run: incompatible combinations (n/a)", ""]
            lines += [f"- {method}: {reason}" for method, reason in sorted(self.not_applicable.items())]
        if self.plots:
            lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in self.plots]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.plots = plot_all(self)
        tables = [("results.csv", self.table_rows()), ("jobs.csv", self.job_rows())]
        if self.target_rows:
            tables.append(("time_to_target.csv", (TARGET_COLUMNS, [row.cells() for row in self.target_rows])))
        for name, (columns, rows) in tables:
            with (self.out_dir / name).open("w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(columns)
                writer.writerows(rows)
        (self.out_dir / "report.md").write_text(self.markdown(), encoding="utf-8")
        write_dashboard(self)

    def print(self) -> None:
        console = Console()
        title = (f"test {self.metric} (%) at each run's selected step · mean ± std (n) over seeds · dev-selected · "
                 f"{self.root}" + (f" · sweep {self.sweep}" if self.sweep is not None else ""))
        for by_method in (False, True):  # a grid wider than the terminal: one row per method instead
            header, rows = self.grid(by_method)
            table = Table(title=title)
            labels = 1 if by_method else 2  # method, or model and task
            for i, column in enumerate(header):
                table.add_column(column, justify="left" if i < labels else "right")
            for row in rows:
                table.add_row(*[f"[bold green]{text}[/]" if best else text for text, best in row])
            if console.measure(table, options=console.options.update_width(1 << 20)).maximum <= console.width:
                break
        console.print(table)
        if self.target_rows:
            target_table = Table(title=f"time to target: {self.target} · mean ± std over seeds")
            for column in TARGET_COLUMNS:
                target_table.add_column(column, justify="left" if column in ("model", "task", "method", "setting")
                                        else "right")
            for row in self.target_rows:
                target_table.add_row(*row.cells())
            console.print(target_table)
        for job in self.failed:
            console.print(f"[red]{job.status}[/] {job.dir.name}: {job.error}")
        for method, reason in sorted(self.not_applicable.items()):
            console.print(f"[dim]n/a[/] {method}: {reason}")
        console.print(f"report: {self.out_dir}/report.html (dashboard), report.md, results.csv, jobs.csv, "
                      f"{len(self.plots)} plots")


def build_report(root: Path, metric: Optional[str] = None, target: Optional[Target] = None,
                 jobs: Optional[List[Job]] = None, sweep: Optional[str] = None) -> Report:
    root = Path(root)
    jobs = find_jobs(root) if jobs is None else jobs
    report = Report(root, jobs, metric or primary_metric(jobs), target=target, sweep=sweep)
    report.aggregate()
    return report


def build_reports(root: Path, metric: Optional[str] = None, target: Optional[Target] = None,
                  merge: bool = False) -> List[Report]:
    """The directory's report, or one per sweep when it holds several (unless merge)."""
    root = Path(root)
    jobs = find_jobs(root)
    by_sweep: Dict[Optional[str], List[Job]] = defaultdict(list)
    for job in jobs:
        by_sweep[job.sweep].append(job)
    if merge or len(by_sweep) <= 1:
        check_one_launch(root, jobs)
        return [build_report(root, metric, target, jobs)]
    for group in by_sweep.values():
        check_one_launch(root, group)
    return [build_report(root, metric, target, group, "(not recorded)" if sweep is None else sweep)
            for sweep, group in sorted(by_sweep.items(), key=lambda item: str(item[0]))]
