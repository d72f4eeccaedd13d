"""One step's direction distribution, decided by a sampler and executed by the kernels."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

_MASK63 = (1 << 63) - 1


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64 finaliser): distinct inputs, unrelated streams."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 29
    return x & _MASK63


@dataclass
class Plan:
    """z_b for every active block b is regenerated from (seed, b, element)."""

    seed: int
    blocks: torch.Tensor  # active block ids (int64, CPU)
    scale: Optional[torch.Tensor] = None  # per active block std (None: 1)
    weight: Optional[torch.Tensor] = None  # per active block update weight, e.g. IPW (None: 1)

    def for_query(self, q: int) -> "Plan":
        """The same distribution with the seed of query q (q = 0 keeps the step's seed)."""
        return self if q == 0 else dataclasses.replace(self, seed=mix_seed(self.seed, q))

    def scale_of(self, i: int) -> float:
        return 1.0 if self.scale is None else float(self.scale[i])

    def weight_of(self, i: int) -> float:
        return 1.0 if self.weight is None else float(self.weight[i])
