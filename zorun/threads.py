"""How many CPU threads a run uses when the user has not said.

torch starts one intra-op thread per physical core. For a small model (the
default `tiny`: 64-wide layers) every op is microseconds of work, and splitting
it across threads costs more than it saves; on a shared machine the threads of
several processes also spin waiting for each other. Measured on a loaded 2-core
machine (docs/outputs.md): `zorun budget=smoke` trained and evaluated in 7.4 s
with one thread and 183 s with two. Larger models' matrix products do scale
with cores on a quiet machine, so they keep torch's default.

- ``OMP_NUM_THREADS`` set: torch already follows it; zorun leaves it alone.
- a CPU model under :data:`SMALL_MODEL` parameters: one thread.
- otherwise: torch's default (one per physical core). On a shared machine, or
  for several runs side by side, set ``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional, Tuple

import torch

SMALL_MODEL = 10_000_000  # parameters: tiny has 0.13M, the smallest real presets (opt-125m, smollm2-135m) >= 125M


def policy(device: torch.device, num_params: int, env: Mapping[str, str]) -> Tuple[Optional[int], str]:
    """(the thread count to set, or None to leave torch's, and why)."""
    if device.type != "cpu":
        return None, f"{device.type} run"
    if env.get("OMP_NUM_THREADS", "").strip():
        return None, f"OMP_NUM_THREADS={env['OMP_NUM_THREADS'].strip()}"
    if num_params < SMALL_MODEL:
        return 1, f"a model under {SMALL_MODEL / 1e6:.0f}M parameters on CPU; OMP_NUM_THREADS=N to change"
    return None, "torch's default, one per core; OMP_NUM_THREADS=1 on a shared machine"


def apply(device: torch.device, num_params: int) -> str:
    """Set the policy's thread count; returns the line the run logs."""
    threads, why = policy(device, num_params, os.environ)
    if threads is not None:
        torch.set_num_threads(threads)
    return f"threads={torch.get_num_threads()} ({why})"
