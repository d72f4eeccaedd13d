"""One step's direction distribution, decided by a sampler and executed by the kernels."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

_MASK63 = (1 << 63) - 1
_CANDIDATE = 0x43414E44  # tags the candidate seeds apart from the query seeds mix_seed(seed, q)


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
    """z_b for every active block b is regenerated from (seed, b, element).

    The direction of block b is d_b = mean_b + s_b·z_b: mean_b is 0 unless the
    Plan carries a mean (LDSD's learned policy mean, a sampler-owned fp32 tensor
    per block id, None where a block has none). ``candidates`` = K asks the
    estimator to first try K one-sided probes, each with its own seed
    (:meth:`candidate`), and to estimate along the best of them.
    """

    seed: int
    blocks: torch.Tensor  # active block ids (int64, CPU)
    scale: Optional[torch.Tensor] = None  # per active block std (None: 1)
    weight: Optional[torch.Tensor] = None  # per active block update weight, e.g. IPW (None: 1)
    candidates: Optional[int] = None  # K candidate directions, best of K (None: the one direction of `seed`)
    mean: Optional[Sequence[Optional[torch.Tensor]]] = None  # indexed by block id; never in the trajectory log

    def for_query(self, q: int) -> "Plan":
        """The same distribution with the seed of query q (q = 0 keeps the step's seed)."""
        return self if q == 0 else dataclasses.replace(self, seed=mix_seed(self.seed, q))

    def candidate(self, i: int) -> "Plan":
        """Candidate i of K: the same distribution with a seed of its own, a single direction."""
        return dataclasses.replace(self, seed=mix_seed(self.seed, _CANDIDATE, i), candidates=None)

    def candidate_plans(self) -> List["Plan"]:
        return [self.candidate(i) for i in range(self.candidates or 0)]

    def scale_of(self, i: int) -> float:
        return 1.0 if self.scale is None else float(self.scale[i])

    def weight_of(self, i: int) -> float:
        return 1.0 if self.weight is None else float(self.weight[i])
