"""Wall-clock split of a run: setup, then every step into forward, perturb, update, sampler, eval, checkpoint, other."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Dict

import torch

PHASES = ("setup", "forward", "perturb", "update", "sampler", "eval", "checkpoint", "other")


class Clock:
    """Accumulates seconds per phase; synchronises CUDA so GPU work lands in its phase."""

    def __init__(self, sync_cuda: bool = False):
        self.sync_cuda = sync_cuda and torch.cuda.is_available()
        self.totals: Dict[str, float] = {p: 0.0 for p in PHASES}

    @contextmanager
    def __call__(self, phase: str):
        if self.sync_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync_cuda:
                torch.cuda.synchronize()
            self.totals[phase] += time.perf_counter() - start

    def add_other(self, wall_s: float) -> None:
        """Everything of the wall time not attributed to a named phase."""
        named = sum(v for k, v in self.totals.items() if k != "other")
        self.totals["other"] = max(0.0, wall_s - named)
