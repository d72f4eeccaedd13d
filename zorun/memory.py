"""Peak memory: what summary.json reports, and the ZO-step vs inference-forward comparison.

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
from typing import Dict, Iterable, List

import torch


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


def compare(overrides: List[str]) -> Dict[str, Dict[str, float]]:
    """Each mode in its own process, so neither sees the other's peak."""
    out = {}
    for mode in ("forward", "zo_step"):
        proc = subprocess.run([sys.executable, "-m", "zorun.memory", "--measure", mode, "logger=none", *overrides],
                              capture_output=True, text=True, check=True)
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--measure":
        print(json.dumps(measure(sys.argv[2], sys.argv[3:])))
