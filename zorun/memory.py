"""Peak memory: what summary.json reports, the ZO-step vs inference-forward comparison, and
PertNN meta-training vs its first-order teacher alone (zorun-bench pertnn).

On CPU the peak is the process's high-water resident set (VmHWM), which
Linux lets us reset (/proc/self/clear_refs), so a measurement covers just
the operation of interest; on CUDA it is the allocator's peak.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import torch


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")


def peak_bytes(device: torch.device) -> int:
    """Peak allocated bytes on a GPU; peak resident set of the process on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def measure(mode: str, overrides: List[str]) -> Dict[str, float]:
    """Build the configured run, warm up with one forward, then measure one `mode` operation."""
    from hydra import compose, initialize_config_dir

    from zorun.cli import CONF_DIR
    from zorun.run import Run
    from zorun.timing import Clock

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    run = Run(cfg, tempfile.mkdtemp(prefix="zorun-mem-"))
    run.setup()
    loss = run.make_loss(next(run.batches()))
    loss()  # warm-up: lazily allocated buffers are not what we measure
    reset_peak(run.device)
    if mode == "forward":
        loss()
    else:
        run.estimator.step(run.sampler.plan(0), loss, cfg.estimator.lr, Clock())
    return {"mode": mode, "peak_bytes": peak_bytes(run.device), "param_bytes": run.space.nbytes}


def measure_metatrain(mode: str, overrides: List[str]) -> Dict[str, float]:
    """zorun-metatrain's config: after one warm-up iteration (meta-step + teacher step, so the teacher's
    momentum exists), the peak of one `teacher` step alone, or of one whole `metatrain` iteration."""
    from hydra import compose, initialize_config_dir

    from zorun.cli import CONF_DIR
    from zorun.metatrain import MetaTrainer
    from zorun.plan import mix_seed
    from zorun.samplers.pertnn_meta import History
    from zorun.timing import Clock

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("metatrain", overrides=overrides)
    trainer = MetaTrainer(cfg, tempfile.mkdtemp(prefix="zorun-mem-"))
    trainer.setup()
    run = trainer.run
    batch = next(run.batches())
    loss, loss_grad = run.make_loss(batch), run.make_loss(batch, differentiable=True)
    history = History.start(len(run.space))
    for step in range(2):  # step 0 warms up; step 1 is measured
        if step == 1:
            reset_peak(run.device)
        if mode == "metatrain" or step == 0:
            trainer.learner.step(mix_seed(cfg.seed, step), history, loss, loss_grad)
        run.estimator.step(None, loss_grad, float(cfg.estimator.lr), Clock())
    return {"mode": mode, "peak_bytes": peak_bytes(run.device), "param_bytes": run.space.nbytes}


def compare(overrides: List[str], modes=("forward", "zo_step")) -> Dict[str, Dict[str, float]]:
    """Each mode in its own process, so neither sees the other's peak."""
    out = {}
    for mode in modes:
        proc = subprocess.run([sys.executable, "-m", "zorun.memory", "--measure", mode, "logger=none", *overrides],
                              capture_output=True, text=True, check=True)
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--measure":
        how = measure_metatrain if sys.argv[2] in ("teacher", "metatrain") else measure
        print(json.dumps(how(sys.argv[2], sys.argv[3:])))
