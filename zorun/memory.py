"""Peak memory: what summary.json reports, the training-step vs inference-forward comparison, and
PertNN meta-training vs its first-order teacher alone (zorun-bench pertnn).

On CPU the peak is the process's high-water resident set (VmHWM), which
Linux lets us reset (/proc/self/clear_refs), so a measurement covers just
the operation of interest; on CUDA it is the allocator's peak, per device.
A run measures its first step and one inference forward on the same batch
(summary.json ``memory``); ``zorun-bench memory`` does the same for several
estimators, each in a fresh process.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List

import torch

from zorun.config import register_configs
from zorun.paths import CONF_DIR


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif Path("/proc/self/clear_refs").exists():  # Linux; elsewhere the CPU peak covers the whole process
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


def peaks(devices: Iterable[torch.device]) -> Dict[str, int]:
    """Peak bytes per device (str(device) -> bytes) since its last reset."""
    return {str(d): peak_bytes(d) for d in devices}


def reset_peaks(devices: Iterable[torch.device]) -> None:
    for d in {torch.device(d) for d in devices}:
        reset_peak(d)


def measure(mode: str, overrides: List[str]) -> Dict[str, float]:
    """Build the configured run, warm up with one forward, then measure one `mode` operation.

    mode: ``forward`` (inference, no grad) or ``step`` (one step of the configured estimator and sampler).
    """
    from hydra import compose, initialize_config_dir

    from zorun.run import Run
    from zorun.timing import Clock

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    run = Run(cfg, tempfile.mkdtemp(prefix="zorun-mem-"))
    run.setup()
    batch = next(run.batches())
    run.make_loss(batch)()  # warm-up: lazily allocated buffers are not what we measure
    loss = run.make_loss(batch, differentiable=run.estimator.differentiable)
    devices = run.devices()
    reset_peaks(devices)
    if mode == "forward":
        run.make_loss(batch)()
    else:
        run.estimator.step(run.sampler.plan(0), loss, cfg.estimator.lr, Clock())
    return {"mode": mode, "peak_bytes": peak_bytes(run.device), "peaks": peaks(devices),
            "param_bytes": run.space.nbytes, "state_bytes": run.estimator.state_bytes}


def measure_metatrain(mode: str, overrides: List[str]) -> Dict[str, float]:
    """zorun-metatrain's config: after one warm-up iteration (meta-step + teacher step, so the teacher's
    momentum exists), the peak of one `teacher` step alone, or of one whole `metatrain` iteration."""
    from hydra import compose, initialize_config_dir

    from zorun.metatrain import MetaTrainer
    from zorun.plan import mix_seed
    from zorun.samplers.pertnn_meta import History
    from zorun.timing import Clock

    register_configs()
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


def _measure_in_subprocess(mode: str, overrides: List[str]) -> Dict[str, float]:
    proc = subprocess.run([sys.executable, "-m", "zorun.memory", "--measure", mode, "logger=none", *overrides],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {mode} {' '.join(overrides)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(overrides: List[str], methods: List[str] = ("",)) -> Dict[str, Dict[str, float]]:
    """An inference forward, then one step of each method (ESTIMATOR/SAMPLER, "" for the configured one),
    each in its own process, so that none sees another's peak."""
    out = {"forward": _measure_in_subprocess("forward", overrides), "steps": {}}
    for method in methods:
        extra = []
        if method:
            estimator, _, sampler = method.partition("/")
            extra = [f"estimator={estimator}"] + ([f"sampler={sampler}"] if sampler else [])
        out["steps"][method or "configured"] = _measure_in_subprocess("step", [*overrides, *extra])
    return out


def compare_metatrain(overrides: List[str]) -> Dict[str, Dict[str, float]]:
    """The first-order teacher step alone and a whole meta-training iteration, each in its own process."""
    return {mode: _measure_in_subprocess(mode, overrides) for mode in ("teacher", "metatrain")}


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--measure":
        how = measure_metatrain if sys.argv[2] in ("teacher", "metatrain") else measure
        print(json.dumps(how(sys.argv[2], sys.argv[3:])))
