"""Checkpoints, resume, and the exact undo of a non-finite step: what lets a run stop and go on bit for bit.

The functions that take a ``run`` (a :class:`zorun.run.Run`) save and load
its counters (RUN_STATE) with the stack's state; the others work on a
:class:`~zorun.stack.Stack` alone, for zorun-export and zorun-metatrain too.
See docs/checkpoints.md.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig

from zorun.checkpoint import (Checkpoint, CheckpointError, NonFiniteError, all_finite, check_savable, log_sizes,
                              rng_state, set_rng_state)
from zorun.models import load_model
from zorun.params import ParamSpace
from zorun.registry import build_estimator, build_sampler
from zorun.replay import replay
from zorun.resume import comparable_config, config_change
from zorun.stack import Stack
from zorun.timing import Clock
from zorun.trajectory import read

log = logging.getLogger(__name__)

# Run counters a checkpoint carries (with the loss tail, dev_initial, wall time and phase times).
RUN_STATE = ("step", "batches_done", "forward_passes", "backward_passes", "eval_examples", "skipped_steps",
             "consecutive_skips", "selected")


def run_state(run) -> Dict[str, Any]:
    state = {key: getattr(run, key) for key in RUN_STATE}
    state.update(losses=run.losses[-run.cfg.budget.log_every:], dev_initial=run.results["dev_initial"],
                 wall_s=run.wall_s(), time_s=dict(run.clock.totals))
    return state


def save_checkpoint(run) -> bool:
    """Checkpoint the run's current step (once). False when the parameters are not finite or have blown up:
    nothing is written."""
    if run.saved_step == run.step:
        return True
    if not within_bounds(run):
        return False
    stack = run.stack
    state = {"estimator": stack.estimator.state_dict(), "sampler": stack.sampler.state_dict(),
             "rng": rng_state(), "run": run_state(run)}
    try:
        with run.clock("checkpoint"):
            if run.dp.is_main:
                meta = {"config": comparable_config(run.cfg), "logs": log_sizes(run.log_paths())}
                path = run.checkpoints.save(run.step, stack.space, meta, state)
            else:  # identical parameters: this rank checks what rank 0 checks, and stops where it stops
                check_savable(run.step, stack.space, state)
                path = None
    except NonFiniteError as err:
        run.fail("diverged", f"{err}: an update overflowed; lower estimator.lr (last finite checkpoint: "
                             f"{_last_checkpoint(run)})")
        return False
    run.saved_step = run.step
    if path is not None:
        log.info("checkpoint %s", path)
    return True


def resume(run, ckpt: Checkpoint) -> None:
    """The run as `ckpt` saved it: parameters, estimator and sampler state, generators, counters and clocks."""
    stack = run.stack
    ckpt.check_model(stack.space)
    refusal = config_change(ckpt.path, ckpt.meta["config"], run.cfg)
    if refusal is not None:
        raise refusal
    ckpt.load_params(stack.space)
    state = ckpt.load_state()
    try:
        stack.estimator.load_state_dict(state["estimator"])
        stack.sampler.load_state_dict(state["sampler"])
    except (KeyError, ValueError, RuntimeError, TypeError) as err:
        raise CheckpointError(f"checkpoint {ckpt.path}: estimator/sampler state does not load "
                              f"({type(err).__name__}: {err})") from err
    set_rng_state(state["rng"])
    saved = state["run"]
    for key in RUN_STATE:
        setattr(run, key, saved[key])
    run.losses = list(saved["losses"])
    run.results["dev_initial"] = saved["dev_initial"]
    run.start_time -= saved["wall_s"]
    for phase, seconds in saved["time_s"].items():
        run.clock.totals[phase] = run.clock.totals.get(phase, 0.0) + seconds
    run.resumed_from = run.saved_step = ckpt.step
    log.info("resumed from %s at step %d", ckpt.path, ckpt.step)


def within_bounds(run) -> bool:
    """The parameter-norm guard (zorun.norm_guard): False, and status diverged, once θ has blown up."""
    blown = run.guard.check(run.stack.space, run.step) if run.guard is not None else None
    if blown is not None:
        run.fail("diverged", f"{blown} (last checkpoint: {_last_checkpoint(run)})")
    return blown is None


def _last_checkpoint(run) -> str:
    last = run.checkpoints.steps()
    return str(last[-1][1]) if last else "none"


def undo_nonfinite(run, values: List[float]) -> bool:
    """Restore the run's step exactly and log it; False when the run must stop (status diverged)."""
    budget, t, stack = run.cfg.budget, run.step, run.stack
    action = getattr(budget.on_nonfinite, "value", budget.on_nonfinite)
    if not getattr(stack.estimator, "differentiable", False):  # first-order estimators leave θ untouched
        restore_exactly(stack, run.checkpoints.latest(), run.trajectory.path, t, run.clock)
    run.skipped_steps += 1
    run.consecutive_skips += 1
    n = run.consecutive_skips
    run.write_record({"step": t + 1, "nonfinite": [float(v) for v in values], "action": action,
                      "wall_s": run.wall_s()})
    bad = all_finite(stack.space)
    if bad is not None:
        run.fail("diverged", f"the parameters were already non-finite before step {t} ('{bad}'): an update "
                             f"overflowed; lower estimator.lr")
    elif action == "stop":
        run.fail("diverged", f"non-finite loss at step {t}; parameters restored exactly; lower estimator.lr or "
                             f"estimator.eps (budget.on_nonfinite=skip skips such steps)")
    elif n >= budget.max_nonfinite_skips:
        run.fail("diverged", f"{n} consecutive non-finite losses (steps {t - n + 1}..{t}); parameters restored "
                             f"exactly to before step {t - n + 1}; lower estimator.lr or estimator.eps")
    else:
        log.warning("non-finite loss at step %d: skipped, parameters restored exactly (%d in a row, %d allowed)",
                    t, n, budget.max_nonfinite_skips)
        return True
    return False


def restore_exactly(stack: Stack, latest: Optional[Checkpoint], trajectory: Path, step: int, clock: Clock) -> None:
    """θ and the estimator state as they were before `step`, bit for bit: the newest checkpoint `latest` (or the
    base model) plus the trajectory log replayed since.

    Undoing the probe by re-adding ε·z is not exact in floating point
    ((θ + a) − a ≠ θ when |a| ≫ |θ|), and a copy of θ taken before each
    step would double the memory; replay is exact and costs only perturb
    and update passes, and only when a step goes wrong.
    """
    sampler = stack.replayed_sampler  # its state is replayed too
    with clock("checkpoint"):
        if latest is not None:
            latest.load_params(stack.space)
            load_state(stack, latest)
        else:
            load_base_params(stack.cfg, stack.space)
            stack.estimator = build_estimator(stack.cfg, stack.space)
            if sampler is not None:
                sampler.load_state_dict(build_sampler(stack.cfg, stack.space, stack.cfg.seed).state_dict())
        _, records = read(trajectory)
    replay(stack.estimator, records, len(stack.space), latest.step if latest else 0, step, clock, sampler)


def load_state(stack: Stack, ckpt: Checkpoint) -> None:
    """The estimator's state as `ckpt` saved it, and the sampler's where a replay goes on from it."""
    state = ckpt.load_state()
    stack.estimator.load_state_dict(state["estimator"])
    if stack.replayed_sampler is not None:
        stack.replayed_sampler.load_state_dict(state["sampler"])


def load_base_params(cfg: DictConfig, space: ParamSpace) -> None:
    """The trainable tensors of the model as loaded at the start (pretrained weights are read on the CPU;
    a random init is redrawn on the run's device, whose generator made it)."""
    model_cfg = cfg.model.copy()
    if str(getattr(model_cfg.init, "value", model_cfg.init)) == "pretrained" or model_cfg.get("device_map"):
        model_cfg.device = "cpu"  # a placed random-init model was drawn on the CPU, too
    model_cfg.device_map = None
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):  # load_model seeds the global generators
        base = ParamSpace.from_model(load_model(model_cfg, cfg.seed))
    with torch.no_grad():
        for mine, theirs in zip(space.blocks, base.blocks):
            mine.tensor.copy_(theirs.tensor)
