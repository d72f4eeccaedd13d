"""zorun-bench scaling: data-parallel ZO throughput under torchrun with 1, 2, ... processes."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List

import torch

from zorun.bench.common import compose, environment
from zorun.errors import ZorunError


def bench_scaling(args: argparse.Namespace) -> Dict[str, Any]:
    """Training throughput of data-parallel ZO: the same run under torchrun with 1, 2, ... processes."""
    import os
    import socket
    import subprocess
    import tempfile
    from pathlib import Path

    cfg = compose(args.overrides)
    try:
        counts = [int(n) for n in args.nprocs.split(",")]
    except ValueError:
        raise ZorunError(f"--nprocs={args.nprocs}: expected comma-separated process counts such as 1,2")
    if min(counts) < 1 or max(counts) > cfg.budget.batch_size:
        raise ZorunError(f"--nprocs must be between 1 and budget.batch_size={cfg.budget.batch_size}")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads or 1)}
    overrides = ["model=opt-125m", *args.overrides, "model.init=random", f"budget.steps={args.steps}",
                 "budget.checkpoint_every=0", "task.num_dev=0", "task.num_test=0", "logger=none",
                 "logger.progress=false"]
    print(f"zorun-bench scaling  {cfg.model.name} (random init) {cfg.estimator.name}/{cfg.sampler.name}, global batch "
          f"{cfg.budget.batch_size} of task={cfg.task.name}, {args.steps} steps, {env['OMP_NUM_THREADS']} thread(s) "
          f"per process, torch={torch.__version__}")
    print(f"{'processes':>9} {'s / step':>9} {'forward':>8} {'pert+upd':>9} {'examples/s':>11} {'speed-up':>9}",
          flush=True)
    rows: List[Dict[str, Any]] = []
    for n in counts:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        run_dir = Path(tempfile.mkdtemp(prefix=f"zorun-scaling-{n}-"))
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", f"--master_port={port}",
               "-m", "zorun", *overrides, f"hydra.run.dir={run_dir}"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ZorunError(f"the {n}-process run failed (exit {proc.returncode}): "
                             f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no output'}")
        summary = json.loads((run_dir / "summary.json").read_text())
        train_s = sum(summary["time_s"].get(k, 0.0) for k in ("forward", "perturb", "update", "sampler"))  # rank 0's
        times, steps = summary["time_s"], summary["steps"]
        row = {"processes": n, "step_s": train_s / steps, "forward_s": times["forward"] / steps,
               "perturb_update_s": (times["perturb"] + times["update"]) / steps,
               "examples_per_s": steps * cfg.budget.batch_size / train_s}
        row["speedup"] = row["examples_per_s"] / rows[0]["examples_per_s"] if rows else 1.0
        rows.append(row)
        print(f"{n:>9} {row['step_s']:>9.3f} {row['forward_s']:>8.3f} {row['perturb_update_s']:>9.3f} "
              f"{row['examples_per_s']:>11.2f} {row['speedup']:>9.2f}", flush=True)
    return {"command": "scaling", "overrides": overrides, "env": environment(torch.device("cpu")), "rows": rows}
