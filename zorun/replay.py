"""Rebuild parameters from a starting point plus the trajectory log: the library of `zorun-replay`.

`zorun-replay RUN_DIR` loads the run's base model (its saved config), replays
every logged step through the run's estimator with the logged loss values,
writes the parameters to ``RUN_DIR/replayed.safetensors`` and compares them
with the checkpoint of the same step when there is one. The estimator makes
exactly the kernel calls it made in training, so on the device and kernel
backend the run used the result is bit for bit the trained parameters; no
forward pass runs, so a replay costs the perturb and update passes only.
The same mechanism undoes a non-finite step exactly inside a run
(:func:`zorun.recovery.restore_exactly`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open
from safetensors.torch import save_file

import zorun.config  # noqa: F401  (registers the zorun.* resolvers that saved run configs use)
from zorun.checkpoint import PARAMS, Checkpoints
from zorun.errors import ZorunError
from zorun.stack import Stack
from zorun.timing import Clock
from zorun.trajectory import NAME, SAMPLER_STATE, ReplayError, ScriptedLoss, decode_plan, read, steps_between


def replay(estimator, records: List[Dict[str, Any]], num_blocks: int, start: int, stop: int, clock: Clock,
           sampler=None) -> int:
    """Apply the logged steps start <= step < stop through `estimator`; returns how many were applied.

    A sampler whose Plans carry state (``replays_state``, e.g. LDSD's mean) must come with its state as of
    step `start`: each Plan is completed with it, and it learns from each replayed step as in training.
    """
    if getattr(estimator, "differentiable", False):
        raise ReplayError(f"estimator={estimator.name} is first-order: its updates are not a function of logged "
                          f"loss values, so its trajectory cannot be replayed")
    applied = 0
    for record in steps_between(records, start, stop):
        oracle = ScriptedLoss(record["losses"], record["step"])
        plan = decode_plan(record, num_blocks)
        if record.get("mean") == SAMPLER_STATE:
            if sampler is None:
                raise ReplayError(f"step {record['step']}: the Plan had a sampler-held mean and no sampler replays it")
            plan = sampler.complete(plan)
        result = estimator.step(plan, oracle, record["lr"], clock)
        logged = record["grad"]
        if oracle.calls != len(oracle.values) or not result.finite or logged is None or result.grad != logged:
            raise ReplayError(f"step {record['step']}: the replayed projected gradient {result.grad!r} differs from "
                              f"the logged {logged!r}; the log was written with another estimator or config")
        if sampler is not None:
            sampler.learn(plan, result)
        applied += 1
    return applied


def compare(space, checkpoint_params: Path) -> float:
    """Largest absolute difference between the model's trainable tensors and a checkpoint's."""
    worst = 0.0
    with safe_open(str(checkpoint_params), framework="pt") as f:
        for b in space.blocks:
            saved = f.get_tensor(b.name).to(b.tensor.device)
            worst = max(worst, float((saved.double() - b.tensor.detach().double()).abs().max()))
    return worst


def load_run_config(run_dir: Path, device: Optional[str], command: str) -> DictConfig:
    """A run directory's composed config (YAML's safe loader: data only), on `device` if given."""
    config_path = run_dir / ".hydra" / "config.yaml"
    if not config_path.is_file():
        raise ZorunError(f"{run_dir} has no .hydra/config.yaml; point {command} at a zorun run directory")
    cfg = OmegaConf.load(config_path)
    if device:
        cfg.model.device = device
    return cfg


def run_replay(run_dir: Path, steps: int | None, out: Path | None, device: str | None, atol: float) -> int:
    cfg = load_run_config(run_dir, device, "zorun-replay")
    header, records = read(run_dir / NAME)
    logged = records[-1]["step"] + 1 if records else 0
    if steps is not None and not 0 <= steps <= logged:
        raise ReplayError(f"--steps {steps}: the log of {run_dir} holds steps 0..{logged - 1}")
    stop = logged if steps is None else steps
    started = time.perf_counter()
    stack = Stack.build(cfg)
    if header["num_blocks"] != len(stack.space):
        raise ReplayError(f"the log has {header['num_blocks']} blocks, model={cfg.model.name} has {len(stack.space)}")
    applied = replay(stack.estimator, records, len(stack.space), 0, stop, Clock(), stack.replayed_sampler)
    seconds = time.perf_counter() - started
    out = out or run_dir / "replayed.safetensors"
    save_file({b.name: b.tensor.detach().cpu().contiguous() for b in stack.space.blocks}, str(out),
              metadata={"replayed_steps": str(stop)})
    log_bytes = (run_dir / NAME).stat().st_size
    per_1000 = log_bytes / max(stop, 1) * 1000
    print(f"zorun-replay: {applied} updates of steps 0..{stop - 1} ({stop - applied} skipped) from the base model "
          f"in {seconds:.1f} s -> {out}")
    print(f"trajectory log: {log_bytes} bytes ({per_1000:.0f} bytes per 1,000 steps)")
    match = {step: path for step, path in Checkpoints(run_dir / "checkpoints", keep=1).steps()}.get(stop)
    if match is None:
        print(f"no checkpoint at step {stop} to compare with")
        return 0
    diff = compare(stack.space, match / PARAMS)
    size = (match / PARAMS).stat().st_size
    verdict = "equal bit for bit" if diff == 0 else f"max |difference| {diff:.3g}"
    print(f"checkpoint {match.name}: params {size} bytes; replayed parameters: {verdict}")
    return 0 if diff <= atol and math.isfinite(diff) else 1
