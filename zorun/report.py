"""zorun-report: a sweep directory as the table a paper would print, plus plots.

Reads only what every job writes (``.hydra/``, ``summary.json``,
``metrics.jsonl``), so it works the same after a local or a SLURM multirun.
Rows are model x task, columns the methods (see
:func:`zorun.multirun.method_label`). Within a cell, the jobs that differ only
by seed (the run seed or the data draw, task.seed) form one hyperparameter
setting. Each job contributes its results at the step its run selected on
dev (summary.json's ``selected``: budget.select, MeZO's best dev loss by
default); the setting with the best mean dev metric there is chosen (dev
only, never test) and its test metric is shown as mean ± std (n) over seeds
(the mean alone for one seed). Failed jobs are listed with their error line.
Besides report.md, the CSV files and PNG plots, ``report.html`` is an
interactive dashboard of the same results (:mod:`zorun.dashboard`).

A directory holds one sweep: the jobs of one launch command (each job's
``sweep.json``) and its relaunches. One that holds several (another grid
pointed at it) is split, a report per sweep in ``report/<sweep>/``, unless
--merge asks for one; two runs of one configuration in a directory (two
launches that collided) are refused, since their seeds would count twice.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf

from zorun.dashboard import write_dashboard
from zorun.errors import ZorunError
from zorun.plots import plot_all, read_records
from zorun.multirun import NOT_IDENTITY, SWEEP_RECORD, config_hash, method_label, override_root, safe_dirname
from zorun.time_to_target import COLUMNS as TARGET_COLUMNS
from zorun.time_to_target import Row, Target, time_to_target

PRIMARY_METRICS = ("accuracy", "f1", "em")  # the first one a task reports is the table's metric
SEED_KEYS = ("seed", "task.seed")  # what mean ± std runs over: the run seed and the data draw (MeZO's SEED)
HIDDEN_OVERRIDES = NOT_IDENTITY + ("sweep",)  # not in a setting's label: what it is not (nor the seeds)
NOT_APPLICABLE = "incompatible"  # summary status of a job whose methods cannot run together (skip_incompatible)
REPORT_DIR = "report"
MARKDOWN_METHODS = 8  # more methods than this: report.md lists a row per method (a column per model x task)


@dataclass
class Job:
    dir: Path
    config: DictConfig
    overrides: List[str]
    summary: Optional[Dict[str, Any]]
    sweep: Optional[str] = None  # the launch command's overrides (sweep.json); None: not recorded

    @property
    def status(self) -> str:
        return self.summary.get("status", "unknown") if self.summary else "no summary.json"

    @property
    def error(self) -> str:
        if self.summary is None:
            return "the job was killed or is still running"
        return str(self.summary.get("error") or "").splitlines()[0] if self.summary.get("error") else ""

    @property
    def method(self) -> str:
        return method_label(OmegaConf.to_container(self.config, resolve=False))

    @property
    def key(self) -> Tuple[str, str]:
        return str(self.config.model.name), str(self.config.task.name)

    @property
    def setting(self) -> str:
        """Identity of the hyperparameter setting: the config without the seeds."""
        cfg = copy.deepcopy(self.config)
        cfg.task.pop("seed", None)
        return config_hash(cfg, drop=("seed",))

    @property
    def label(self) -> str:
        """The overrides that name this setting (seeds and sweep excluded), for the CSV."""
        return " ".join(o for o in self.overrides if override_root(o) not in HIDDEN_OVERRIDES
                        and o.lstrip("+~").split("=")[0] not in SEED_KEYS)

    @property
    def selected(self) -> Dict[str, Any]:
        """The results at the step the run selected on dev; a summary written before budget.select: the final ones."""
        summary = self.summary or {}
        return summary.get("selected") or {"dev": summary.get("dev"), "test": summary.get("test")}


def metric_of(results: Optional[Dict[str, Any]], metric: str) -> Optional[float]:
    value = (results or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


@dataclass
class Cell:
    mean: float
    std: float
    n: int
    dev: Optional[float]
    setting: str  # hash of the config without the seed
    label: str  # the overrides naming that setting
    best: bool = False

    def text(self, digits: int = 1, scale: float = 100.0) -> str:
        """`mean ± std (n)`, or the mean alone for one seed (a std of one value says nothing)."""
        mark = " *" if self.best else ""
        if self.n == 1:
            return f"{self.mean * scale:.{digits}f}{mark}"
        return f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f} ({self.n}){mark}"


@dataclass
class Report:
    root: Path
    jobs: List[Job]
    metric: str
    cells: Dict[Tuple[str, str], Dict[str, Cell]] = field(default_factory=dict)
    methods: List[str] = field(default_factory=list)
    plots: List[Path] = field(default_factory=list)
    target: Optional[Target] = None
    target_rows: List[Row] = field(default_factory=list)
    sweep: Optional[str] = None  # set when the directory holds several sweeps and this report covers one

    @property
    def out_dir(self) -> Path:
        return self.root / REPORT_DIR / (safe_dirname(self.sweep) if self.sweep is not None else "")

    @property
    def failed(self) -> List[Job]:
        return [job for job in self.jobs if job.status not in ("completed", NOT_APPLICABLE)]

    @property
    def not_applicable(self) -> Dict[str, str]:
        """method -> why it cannot run, for the grid's incompatible combinations."""
        return {job.method: job.error for job in self.jobs if job.status == NOT_APPLICABLE}

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

    # ------------------------------------------------------------ aggregation
    def aggregate(self) -> None:
        groups: Dict[Tuple[str, str], Dict[str, Dict[str, List[Job]]]] = defaultdict(lambda: defaultdict(dict))
        for job in self.jobs:
            if job.status == "completed" and metric_of(job.selected.get("test"), self.metric) is not None:
                groups[job.key][job.method].setdefault(job.setting, []).append(job)
        for key in sorted(groups):
            row: Dict[str, Cell] = {}
            for method, settings in groups[key].items():
                row[method] = max((self._cell(jobs) for jobs in settings.values()), key=_dev_order)
            best = max(cell.mean for cell in row.values())
            for cell in row.values():
                cell.best = cell.mean == best and len(row) > 1
            self.cells[key] = row
        found = {m for row in self.cells.values() for m in row} | set(self.not_applicable)
        first = [m for m in ("zero-shot", "icl") if m in found]
        self.methods = first + sorted(found - set(first))
        if self.target is not None:
            self.target_rows = time_to_target(self.jobs, self.target, read_records)

    def _cell(self, jobs: List[Job]) -> Cell:
        tests = [metric_of(j.selected.get("test"), self.metric) for j in jobs]
        devs = [d for d in (metric_of(j.selected.get("dev"), self.metric) for j in jobs) if d is not None]
        return Cell(mean=statistics.fmean(tests), std=statistics.stdev(tests) if len(tests) > 1 else 0.0,
                    n=len(tests), dev=statistics.fmean(devs) if devs else None, setting=jobs[0].setting,
                    label=jobs[0].label)

    # ---------------------------------------------------------------- outputs
    def table_rows(self) -> Tuple[List[str], List[List[Any]]]:
        columns = ["model", "task", "method", f"test_{self.metric}_mean", f"test_{self.metric}_std", "seeds",
                   f"dev_{self.metric}_mean", "best", "selected_setting"]
        rows = [[model, task, method, cell.mean, cell.std, cell.n, cell.dev, cell.best, cell.label]
                for (model, task), row in self.cells.items() for method, cell in row.items()]
        return columns, rows

    def job_rows(self) -> Tuple[List[str], List[List[Any]]]:
        columns = ["job", "model", "task", "method", "seed", "task_seed", "status", "selected_by", "selected_step",
                   f"dev_{self.metric}", f"test_{self.metric}", f"final_test_{self.metric}", "train_loss", "wall_s",
                   "forward_passes", "error"]
        rows = []
        for job in self.jobs:
            s, chosen = job.summary or {}, job.selected
            rows.append([job.dir.relative_to(self.root).as_posix(), *job.key, job.method, int(job.config.seed),
                         job.config.task.get("seed"), job.status, chosen.get("by"), chosen.get("step"),
                         metric_of(chosen.get("dev"), self.metric), metric_of(chosen.get("test"), self.metric),
                         metric_of(s.get("test"), self.metric), s.get("train_loss"), s.get("wall_s"),
                         s.get("forward_passes"), job.error])
        return columns, rows

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
        from rich.console import Console
        from rich.table import Table

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


def _dev_order(cell: Cell) -> float:
    return cell.dev if cell.dev is not None else -math.inf


# ------------------------------------------------------------------- loading
def find_jobs(root: Path) -> List[Job]:
    """Every job directory under root (it has .hydra/config.yaml); skipped duplicates left out."""
    jobs = []
    for cfg_path in sorted(root.rglob(".hydra/config.yaml")):
        job_dir = cfg_path.parent.parent
        if (job_dir / "skipped.json").exists() or REPORT_DIR in job_dir.relative_to(root).parts:
            continue
        overrides_path = cfg_path.with_name("overrides.yaml")
        overrides = [str(o) for o in OmegaConf.load(overrides_path)] if overrides_path.exists() else []
        summary_path = job_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
        record = job_dir / SWEEP_RECORD
        sweep = " ".join(json.loads(record.read_text())["grid"]) if record.exists() else None
        jobs.append(Job(job_dir, OmegaConf.load(cfg_path), overrides, summary, sweep))
    return jobs


def check_one_launch(root: Path, jobs: Sequence[Job]) -> None:
    """Refuse two runs of one configuration: only colliding launches write them (a relaunch skips what
    completed), and a report would count their seeds twice."""
    seen: Dict[str, Job] = {}
    for job in jobs:
        digest = (job.summary or {}).get("config_hash")
        if digest in seen:
            raise ZorunError(f"{root} holds two runs of one configuration ({seen[digest].dir.name} and "
                             f"{job.dir.name}): two launches wrote into it; move one launch's jobs to a directory "
                             f"of their own, then report each")
        if digest:
            seen[digest] = job


def primary_metric(jobs: Sequence[Job]) -> str:
    for job in jobs:
        for metric in PRIMARY_METRICS:
            if metric_of(job.selected.get("test"), metric) is not None:
                return metric
    return PRIMARY_METRICS[0]


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


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="zorun-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory (hydra.sweep.dir)")
    parser.add_argument("--metric", help="test/dev metric of the table (default: accuracy, else f1, else em)")
    parser.add_argument("--target", metavar="METRIC=VALUE",
                        help="add steps and training seconds to reach a dev metric (accuracy=0.9) or a train loss "
                             "(train_loss=0.3), with each sampler's speed-up over its base estimator")
    parser.add_argument("--merge", action="store_true",
                        help="one report for a directory that holds several sweeps (e.g. MeZO's Table 1 parts), "
                             "instead of one per sweep")
    args = parser.parse_args(argv)
    try:
        target = Target.parse(args.target) if args.target else None
    except ZorunError as err:
        print(f"zorun-report: error: {err}", file=sys.stderr)
        sys.exit(2)
    if not args.sweep_dir.is_dir():
        print(f"zorun-report: error: {args.sweep_dir} is not a directory; pass a multirun directory "
              "such as outputs/multirun/smoke", file=sys.stderr)
        sys.exit(2)
    try:
        reports = build_reports(args.sweep_dir, args.metric, target, args.merge)
    except ZorunError as err:
        print(f"zorun-report: error: {err}", file=sys.stderr)
        sys.exit(2)
    if not reports[0].jobs:
        print(f"zorun-report: error: no job directories (with .hydra/config.yaml) under {args.sweep_dir}",
              file=sys.stderr)
        sys.exit(2)
    for report in reports:
        report.write()
        report.print()
    if len(reports) > 1:
        print(f"zorun-report: {args.sweep_dir} holds {len(reports)} sweeps (launch commands): "
              + "; ".join(f"{r.sweep} ({len(r.jobs)} jobs) -> {r.out_dir}" for r in reports)
              + "; --merge reports them as one")


if __name__ == "__main__":
    main()
