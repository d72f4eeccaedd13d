"""Steps and training seconds each method needs to reach a quality level: the speed-up a sampler buys.

A paper's "1.7x faster" is a time-to-target ratio: the same estimator, two
samplers, the first point at which each reaches the same dev accuracy (or
train loss). The metrics every job logs hold that point: dev records every
``budget.eval_every`` steps, train-loss records (the mean over the last
``budget.log_every`` steps) every ``budget.log_every``. ``train_s`` excludes
set-up, evaluation and checkpoints, so the evaluation schedule does not count.

    zorun-report outputs/multirun/speedup --target accuracy=0.9
    zorun-report outputs/multirun/speedup --target train_loss=0.3
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

from zorun.errors import ZorunError
from zorun.identity import override_root

TRAIN_LOSS = "train_loss"


@dataclass(frozen=True)
class Target:
    """Reached when a dev metric is >= value, or the logged train loss is <= value."""

    metric: str
    value: float

    @classmethod
    def parse(cls, text: str) -> "Target":
        metric, sep, value = text.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not metric or not math.isfinite(number):
            raise ZorunError(f"--target {text!r} is not METRIC=VALUE; use e.g. --target accuracy=0.9 "
                             f"(a dev metric, reached at >= VALUE) or --target {TRAIN_LOSS}=0.3 (reached at <= VALUE)")
        return cls(metric, number)

    def __str__(self) -> str:
        return f"train loss <= {self.value:g}" if self.metric == TRAIN_LOSS else f"dev {self.metric} >= {self.value:g}"

    def first_hit(self, records: Iterable[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        """The first metrics.jsonl record at which the target holds (None: never reached)."""
        for record in records:
            if self.metric == TRAIN_LOSS:
                value = record.get("loss")
                hit = isinstance(value, (int, float)) and value <= self.value
            else:
                value = (record.get("dev") or {}).get(self.metric)
                hit = isinstance(value, (int, float)) and value >= self.value
            if hit:
                return record
        return None


@dataclass
class Row:
    model: str
    task: str
    method: str
    setting: str  # the overrides naming the hyperparameter setting (seed excluded)
    runs: int
    reached: int
    steps: Tuple[float, float]  # mean, std over the runs that reached the target
    train_s: Tuple[float, float]
    final_loss: Tuple[float, float]  # summary train_loss over all runs
    speedup: Optional[float] = None  # base method's mean train_s / this row's (same model, task, other overrides)

    def cells(self) -> List[str]:
        def pm(pair: Tuple[float, float], fmt: str) -> str:
            return "–" if math.isnan(pair[0]) else f"{pair[0]:{fmt}} ± {pair[1]:{fmt}}"

        return [self.model, self.task, self.method, f"{self.reached}/{self.runs}", pm(self.steps, ".0f"),
                pm(self.train_s, ".1f"), "–" if self.speedup is None else f"{self.speedup:.2f}x",
                pm(self.final_loss, ".4f"), self.setting]


COLUMNS = ["model", "task", "method", "reached", "steps", "train_s", "speedup", "final_train_loss", "setting"]


def _mean_std(values: List[float]) -> Tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def base_method(method: str) -> Optional[str]:
    """The column a sampler's speed-up is measured against: `mezo+adalezo` -> `mezo`."""
    return method.split("+", 1)[0] if "+" in method else None


def shared_setting(label: str) -> str:
    """A setting's overrides without the sampler's: what a sampler and its base run must share to be compared."""
    return " ".join(o for o in label.split() if override_root(o) != "sampler")


def time_to_target(jobs, target: Target, read_metrics) -> List[Row]:
    """One row per (model, task, method, setting) over the completed jobs, seeds pooled."""
    groups: Dict[Tuple[str, str, str, str], List[Any]] = defaultdict(list)
    for job in jobs:
        if job.status == "completed":
            groups[(*job.key, job.method, job.label)].append(job)
    rows = []
    for (model, task, method, label), members in sorted(groups.items()):
        hits = [h for h in (target.first_hit(read_metrics(j.dir)) for j in members) if h is not None]
        losses = [float(j.summary["train_loss"]) for j in members
                  if isinstance(j.summary.get("train_loss"), (int, float)) and math.isfinite(j.summary["train_loss"])]
        rows.append(Row(model, task, method, label, len(members), len(hits),
                        _mean_std([float(h["step"]) for h in hits]),
                        _mean_std([float(h["train_s"]) for h in hits if "train_s" in h]),
                        _mean_std(losses)))
    by_key = {(r.model, r.task, r.method, shared_setting(r.setting)): r for r in rows if r.reached == r.runs}
    for row in rows:
        base = by_key.get((row.model, row.task, base_method(row.method) or "", shared_setting(row.setting)))
        if base is not None and row.reached == row.runs and row.train_s[0] > 0:
            row.speedup = base.train_s[0] / row.train_s[0]
    return rows
