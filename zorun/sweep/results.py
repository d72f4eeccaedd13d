"""A sweep directory's jobs and their results: what every output of the sweep report reads.

Only what every job writes (``.hydra/``, ``summary.json``, ``metrics.jsonl``,
``sweep.json``): :func:`find_jobs` loads it, :class:`Results` aggregates it
into the table's cells by the rules :mod:`zorun.sweep.report` states. The report's
tables, plots and dashboard and W&B's report run all draw on these objects.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf

import zorun.config  # noqa: F401  registers the zorun.* resolvers that saved run configs use (config_hash resolves)
from zorun.errors import ZorunError
from zorun.identity import NOT_IDENTITY, SWEEP_RECORD, config_hash, method_label, override_root, safe_dirname
from zorun.sweep.time_to_target import Row, Target, time_to_target

PRIMARY_METRICS = ("accuracy", "f1", "em")  # the first one a task reports is the table's metric
SEED_KEYS = ("seed", "task.seed")  # what mean ± std runs over: the run seed and the data draw (MeZO's SEED)
HIDDEN_OVERRIDES = NOT_IDENTITY + ("sweep",)  # not in a setting's label: what it is not (nor the seeds)
NOT_APPLICABLE = "incompatible"  # summary status of a job whose methods cannot run together (skip_incompatible)
REPORT_DIR = "report"


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


def read_records(job_dir: Path) -> List[Dict[str, Any]]:
    """Every metrics.jsonl record of a job, in order (train-loss, dev and event records)."""
    path = job_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_metrics(job_dir: Path) -> List[Dict[str, Any]]:
    """The train-loss records of a job."""
    return [r for r in read_records(job_dir) if r.get("loss") is not None]


@dataclass
class Results:
    """A sweep's jobs aggregated into the table's cells (:meth:`aggregate`), and the rows every output shows."""

    root: Path
    jobs: List[Job]
    metric: str
    cells: Dict[Tuple[str, str], Dict[str, Cell]] = field(default_factory=dict)
    methods: List[str] = field(default_factory=list)
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

    def phase_times(self) -> Dict[str, List[Dict[str, float]]]:
        """method -> each job's seconds per timing phase (summary.json's time_s), for the time breakdown."""
        by_method: Dict[str, List[Dict[str, float]]] = defaultdict(list)
        for job in self.jobs:
            if job.summary and job.summary.get("time_s"):
                by_method[job.method].append(job.summary["time_s"])
        return dict(by_method)

    def _selected_jobs(self, key: Tuple[str, str], method: str) -> List[Job]:
        cell = self.cells[key][method]
        return [j for j in self.jobs if j.key == key and j.method == method and j.status == "completed"
                and j.setting == cell.setting]

    def mean_curve(self, key: Tuple[str, str], method: str
                   ) -> Optional[Tuple[int, List[int], List[float], List[float]]]:
        """(runs, steps, train loss, wall_s) of the method's dev-selected setting, averaged over its seeds point by
        point up to the shortest run; None when the cell is empty or no run logged a loss."""
        if method not in self.cells[key]:
            return None
        runs = [r for r in (read_metrics(j.dir) for j in self._selected_jobs(key, method)) if r]
        if not runs:
            return None
        n = min(len(r) for r in runs)
        return (len(runs), [runs[0][i]["step"] for i in range(n)],
                [statistics.fmean(r[i]["loss"] for r in runs) for i in range(n)],
                [statistics.fmean(r[i]["wall_s"] for r in runs) for i in range(n)])


def _dev_order(cell: Cell) -> float:
    return cell.dev if cell.dev is not None else -math.inf


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
