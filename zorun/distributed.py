"""Data-parallel ZO under torchrun: every rank a replica, agreeing on two loss scalars per probe.

``torchrun --nproc_per_node=N -m zorun ...`` starts N copies of the run
(torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address).
Every rank draws the same global batch (same data seed), evaluates its slice
of it, and sums (loss·weight, weight) with one all-reduce, weight being what
the loss averages over (examples for a classification loss, answer tokens for
the LM loss), so the global value is the full batch's mean exactly, not a
mean of slice means. Directions come from the shared step seed and every
decision depends only on global values, so each rank applies the identical
update: no parameter or gradient ever crosses the network. Rank 0 alone
writes outputs. torch.distributed carries the scalars: gloo on CPU, NCCL on GPU.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, List, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
TIMEOUT = timedelta(hours=2)  # the other ranks wait at the next probe while rank 0 writes a checkpoint


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


class DataParallel:
    """This process's place among the ranks; a world of one does nothing and costs nothing."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0):
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.device = torch.device("cpu")

    @classmethod
    def from_env(cls) -> "DataParallel":
        """From torchrun's variables; joins (once per process) the process group when there are several ranks."""
        world = world_size()
        dp = cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
        if world > 1:
            if torch.cuda.is_available():
                torch.cuda.set_device(dp.local_rank)  # model.device=auto and cuda then mean this rank's GPU
                dp.device = torch.device("cuda", dp.local_rank)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if dp.device.type == "cuda" else "gloo", timeout=TIMEOUT)
        return dp

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: Sequence[T]) -> List[T]:
        """This rank's contiguous slice of the global batch (sizes differ by at most one)."""
        n = len(batch)
        return list(batch[self.rank * n // self.world: (self.rank + 1) * n // self.world])

    def mean(self, value: float, weight: float) -> float:
        """The weighted mean of every rank's value: Σ value·weight / Σ weight (float64), one all-reduce."""
        if not self.enabled:
            return value
        pair = torch.tensor([value * weight, weight], dtype=torch.float64, device=self.device)
        dist.all_reduce(pair)
        return float(pair[0] / pair[1])

    def any(self, flag: bool) -> bool:
        """Whether any rank says so (stop signals, time limits: every rank must leave the loop at one step)."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)], dtype=torch.int32, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's object on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
