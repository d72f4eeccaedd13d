"""zorun-bench rounding: does 16-bit ZO training learn? Stochastic against nearest rounding against fp32.

Three runs of the same configuration and seed, one after the other, each in
its own process: fp32; the 16-bit dtype with ``estimator.stochastic_rounding``
(the default); and the 16-bit dtype rounding every update to nearest. Every
run draws the same z and the same batches, so the only difference is the
arithmetic. Printed: the logged training loss of each run every ``--every``
steps, the final dev/test figures, and, over every tensor the runs saved that
the model's initial state has (the full model; a LoRA adapter's keys are not
matched), how far training moved each run, Δ = θ_end − θ_start with θ_start
the run's own initial weights (a 16-bit random init is not fp32's rounded):
‖Δ‖ / ‖Δ_fp32‖ (0: the run did not move) and the drift ‖Δ − Δ_fp32‖ / ‖Δ_fp32‖.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import torch

from zorun.bench.common import compose
from zorun.errors import ZorunError
from zorun.models import load_model
from zorun.replay import load_run_config


def _run(overrides: List[str], run_dir: Path) -> Dict[str, Any]:
    cmd = [sys.executable, "-m", "zorun", *overrides, f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, env=os.environ.copy(), capture_output=True, text=True)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no output"
        raise ZorunError(f"the run {' '.join(overrides)} failed (exit {proc.returncode}): {last}")
    losses = {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
              if "loss" in r and "step" in r}
    return {"dir": str(run_dir), "losses": losses, "summary": json.loads((run_dir / "summary.json").read_text()),
            "params": _trained(run_dir)}


def _trained(run_dir: Path) -> Dict[str, torch.Tensor]:
    """The trained tensors a run saved: its LoRA adapter if it has one, else the full model."""
    from safetensors.torch import load_file

    files = sorted((run_dir / "adapter").glob("*.safetensors")) or sorted((run_dir / "model").glob("*.safetensors"))
    if not files:
        raise ZorunError(f"{run_dir} saved no model or adapter; leave budget.save_model=true")
    out: Dict[str, torch.Tensor] = {}
    for f in files:
        out.update({k: v.float() for k, v in load_file(str(f)).items() if v.is_floating_point()})
    return out


def _initial(run_dir: Path) -> Dict[str, torch.Tensor]:
    """The weights the run in run_dir started from: load_model with the config and seed the run saved.

    (Not the bench's own compose, which builds models at random init for speed figures: against a
    pretrained run's start that would measure the pretraining, not the training.)"""
    cfg = load_run_config(run_dir, None, "zorun-bench rounding")
    return {k: v.detach().float() for k, v in load_model(cfg.model, cfg.seed).state_dict().items()}


def _norm(tensors: Dict[str, torch.Tensor]) -> float:
    return sum(float(v.double().pow(2).sum()) for v in tensors.values()) ** 0.5


def bench_rounding(args: argparse.Namespace) -> Dict[str, Any]:
    cfg = compose(args.overrides)  # a bad override is one line before any run starts
    if cfg.estimator.name.startswith("fo-"):
        raise ZorunError("zorun-bench rounding compares the ZO update passes; use a zeroth-order estimator")
    base = [*args.overrides, f"budget.steps={args.steps}", f"budget.log_every={args.every}",
            "budget.save_model=true", "budget.checkpoint_every=0", "logger=none", "logger.progress=false"]
    variants = {"float32": ["model.dtype=float32"],
                f"{args.dtype} stochastic": [f"model.dtype={args.dtype}", "estimator.stochastic_rounding=true"],
                f"{args.dtype} nearest": [f"model.dtype={args.dtype}", "estimator.stochastic_rounding=false"]}
    runs = {}
    root = Path(tempfile.mkdtemp(prefix="zorun-rounding-"))
    for i, (name, extra) in enumerate(variants.items()):
        print(f"running {name} ...", flush=True)
        runs[name] = _run([*base, *extra], root / str(i))
    moved = {}
    for name in variants:
        start = _initial(Path(runs[name]["dir"]))
        moved[name] = {k: v - start[k] for k, v in runs[name]["params"].items() if k in start}
    ref = moved["float32"]
    if not ref or _norm(ref) == 0:
        raise ZorunError("no saved tensor matches the model's initial state (a LoRA adapter?), or fp32 did not move")
    print(f"zorun-bench rounding  {cfg.model.name} {cfg.estimator.name}/{cfg.sampler.name} task={cfg.task.name} "
          f"lr={cfg.estimator.lr} seed={cfg.seed}, {args.steps} steps, {sum(v.numel() for v in ref.values())} "
          f"elements compared; runs in {root}")
    names = list(runs)
    print(f"{'step':>6} " + " ".join(f"{n:>22}" for n in names) + "   (training loss, mean since the last row)")
    for step in sorted(runs["float32"]["losses"]):
        print(f"{step:>6} " + " ".join(f"{runs[n]['losses'].get(step, float('nan')):>22.4f}" for n in names))
    rows = {}
    for n in names:
        s = runs[n]["summary"]
        rows[n] = {"train_loss": s["train_loss"], "dev": s["dev"], "test": s["test"],
                   "moved_vs_fp32": _norm(moved[n]) / _norm(ref),
                   "drift_vs_fp32": _norm({k: moved[n][k] - ref[k] for k in ref}) / _norm(ref)}
        print(f"{n:<22} train loss {s['train_loss']:.4f}  dev {_fmt(s['dev'])}  test {_fmt(s['test'])}  "
              f"moved {rows[n]['moved_vs_fp32']:.3f}x fp32's, drift {rows[n]['drift_vs_fp32']:.3f}")
    return {"command": "rounding", "root": str(root), "runs": {n: {"losses": runs[n]["losses"], **rows[n]} for n in names}}


def _fmt(split: Dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in split.items() if k != "objective")
