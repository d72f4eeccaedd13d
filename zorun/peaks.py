"""Peak memory per device, read and reset: what summary.json reports, and the probe of a run's first step.

On CPU the peak is the process's high-water resident set (VmHWM), which
Linux lets us reset (/proc/self/clear_refs), so a measurement covers just
the operation of interest; on CUDA it is the allocator's peak, per device.
A run measures its first step and one inference forward on the same batch
(summary.json ``memory``); zorun.memory measures them for zorun-bench.
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Tuple

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


def forward_peak(forward: Callable[[], object],
                 devices: Iterable[torch.device]) -> Tuple[Dict[str, int], Dict[str, int]]:
    """(the peaks per device so far, the peaks of one inference `forward` alone); the peaks are then reset, so
    that what follows is measured alone too."""
    devices = list(devices)
    before = peaks(devices)
    reset_peaks(devices)
    with torch.no_grad():
        forward()
    found = peaks(devices)
    reset_peaks(devices)
    return before, found


def step_over_forward(step: Dict[str, int], forward: Dict[str, int]) -> Dict[str, Dict[str, Optional[float]]]:
    """summary.json ``memory``: per device, a step's peak, an inference forward's, and their ratio."""
    return {dev: {"step_peak_bytes": bytes_, "forward_peak_bytes": forward[dev],
                  "step_over_forward": bytes_ / forward[dev] if forward[dev] else None}
            for dev, bytes_ in step.items()}
