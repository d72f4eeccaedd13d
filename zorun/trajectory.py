"""The trajectory log: one short JSON line per step holding what replays its update, no parameters.

A ZO step's writes to θ (and to the estimator's state) are a function of the
Plan (seed, active blocks, scales, weights), the lr and the loss values the
estimator saw. Logging those, floats as their exact decimal repr, lets
:mod:`zorun.replay` call the estimator again with a loss oracle that returns
the logged values: the same kernel calls in the same order with the same
scalars, so θ comes out bit for bit (the kernels are deterministic), with no
forward pass. ``trajectory.jsonl`` starts with a header line; then per step

    {"step": 12, "seed": 4242..., "lr": 0.001, "losses": [0.69, 0.70], "grad": -4.9}

plus "blocks" when not every block is active and any other Plan field that is
set, with its dtype (e.g. "weight": {"float32": [...]}). A Plan's mean is the
sampler's state, not logged: the line says ``"mean": "sampler"`` and a replay
rebuilds it with the sampler (:attr:`zorun.samplers.base.Sampler.replays_state`). Runs are packed: a
layer's consecutive block ids as {"ranges": [[first, count], ...]}, repeated
values (one IPW weight per layer) as {"runs": [[value, count], ...]}, so an
AdaLeZO step costs a few numbers per active layer, not per tensor. A step
undone after a non-finite loss is logged with ``"skip": true`` and is not
replayed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from zorun.errors import ZorunError
from zorun.plan import Plan

NAME = "trajectory.jsonl"
FORMAT = 1
SAMPLER_STATE = "sampler"  # the value logged for a Plan field that the sampler holds (LDSD's mean)


class ReplayError(ZorunError):
    """The log cannot reproduce the run: unreadable, or the estimator asks for other values than it holds."""


def _number(x: float) -> Optional[float]:
    return x if math.isfinite(x) else None  # JSON has no NaN; a skipped step's losses need not replay


def _float(value: Any) -> float:
    """A loss value as a float: first-order estimators' oracles return tensors with autograd history."""
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def encode_plan(plan: Plan, num_blocks: int) -> Dict[str, Any]:
    record: Dict[str, Any] = {"seed": plan.seed}
    for f in dataclasses.fields(plan):
        value = getattr(plan, f.name)
        if f.name == "seed" or value is None:
            continue
        if f.name == "mean":
            record["mean"] = SAMPLER_STATE
            continue
        if f.name == "blocks" and value.numel() == num_blocks and torch.equal(value.cpu(), torch.arange(num_blocks)):
            continue  # every block: the common case stays one short line
        if isinstance(value, torch.Tensor):
            value = {str(value.dtype).removeprefix("torch."): _pack(value)}
        record[f.name] = value
    return record


def _pack(t: torch.Tensor) -> Any:
    """A tensor's values (float32 -> float64 is exact); a 1-D one as runs when that is shorter."""
    values = t.tolist()
    if t.ndim != 1:
        return values
    runs: List[List[Any]] = []  # [first, count]: ranges of consecutive ints, or repeats of a float
    for v in values:
        if runs and (v == runs[-1][0] + runs[-1][1] if not t.is_floating_point() else v == runs[-1][0]):
            runs[-1][1] += 1
        else:
            runs.append([v, 1])
    if 2 * len(runs) >= len(values):
        return values
    return {"runs" if t.is_floating_point() else "ranges": runs}


def _unpack(data: Any, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(data, dict):
        ((kind, runs),) = data.items()
        data = [first + i if kind == "ranges" else first for first, count in runs for i in range(count)]
    return torch.tensor(data, dtype=dtype)


def decode_plan(record: Dict[str, Any], num_blocks: int) -> Plan:
    names = {f.name for f in dataclasses.fields(Plan)}
    kwargs: Dict[str, Any] = {"blocks": torch.arange(num_blocks)}
    for key, value in record.items():
        if key not in names or value == SAMPLER_STATE:
            continue
        if isinstance(value, dict) and len(value) == 1:
            (dtype, data), = value.items()
            value = _unpack(data, getattr(torch, dtype))
        kwargs[key] = value
    return Plan(**kwargs)


class RecordingLoss:
    """Wraps a step's loss oracle and keeps every value it returned, in call order."""

    def __init__(self, fn):
        self.fn = fn
        self.values: List[float] = []

    def __call__(self) -> float:
        value = self.fn()
        self.values.append(_float(value))  # first-order oracles return a tensor; the log keeps its value
        return value


class ScriptedLoss:
    """The oracle of a replayed step: the logged values, in order, and nothing more."""

    def __init__(self, values: List[Optional[float]], step: int):
        self.values = [float("nan") if v is None else float(v) for v in values]
        self.step = step
        self.calls = 0

    def __call__(self) -> float:
        if self.calls >= len(self.values):
            raise ReplayError(f"step {self.step}: the estimator asked for forward pass {self.calls + 1}, the log holds "
                              f"{len(self.values)}; the log was written with another estimator or config")
        self.calls += 1
        return self.values[self.calls - 1]


class TrajectoryWriter:
    """Appends one line per step (flushed), after a header when the file is new."""

    def __init__(self, path: Path, header: Dict[str, Any]):
        self.path = Path(path)
        self.num_blocks = int(header["num_blocks"])
        self._fh = self.path.open("a", encoding="utf-8")
        if self._fh.tell() == 0:
            self._write({"format": FORMAT, **header})

    def _write(self, record: Dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._fh.flush()

    def step(self, step: int, plan: Plan, lr: float, losses: List[float], grad: float, skip: bool = False) -> None:
        record = {"step": step, **encode_plan(plan, self.num_blocks), "lr": lr,
                  "losses": [_number(_float(v)) for v in losses], "grad": _number(float(grad))}
        if skip:
            record["skip"] = True
        self._write(record)

    def close(self) -> None:
        self._fh.close()


def read(path: Path) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """(header, step records). A last line without its newline (a kill mid-write) is dropped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ReplayError(f"cannot read the trajectory log {path} ({err.strerror or type(err).__name__})") from err
    lines = text.split("\n")
    lines = lines[:-1]  # after the last newline: empty, or a partial record
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ReplayError(f"{path}:{number}: malformed line ({err.msg}); the log was edited or corrupted") from err
    if not records or records[0].get("format") != FORMAT:
        raise ReplayError(f"{path} has no format-{FORMAT} header line; it is not a zorun trajectory log")
    return records[0], records[1:]


def steps_between(records: List[Dict[str, Any]], start: int, stop: int) -> Iterator[Dict[str, Any]]:
    """The records of steps start <= step < stop that changed θ (skipped steps did not)."""
    for record in records:
        if start <= record["step"] < stop and not record.get("skip"):
            yield record
