"""The stack a config describes: the model, its trainable blocks, the sampler and the estimator.

A run, zorun-replay, zorun-export, zorun-metatrain and the memory probes build
it here from the same config, so that a replay or an export regenerates
exactly the z and the updates of the run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, List

import torch
from omegaconf import DictConfig

from zorun import kernels, threads
from zorun.errors import ZorunError
from zorun.models import load_model
from zorun.models.fit import check_fit
from zorun.models.placement import input_device
from zorun.params import ParamSpace
from zorun.registry import ESTIMATORS, build_estimator, build_sampler

log = logging.getLogger(__name__)


@dataclass
class Stack:
    """The model as loaded, `device` (where its batches go: the first device of a placed model), its trainable
    blocks, and what trains them. The tokenizer is there for whoever feeds the model text (a replay does not)."""

    cfg: DictConfig
    model: torch.nn.Module
    device: torch.device
    space: ParamSpace
    tokenizer: Any = None
    sampler: Any = None
    estimator: Any = None

    @classmethod
    def build(cls, cfg: DictConfig, tokenizer: Any = None) -> "Stack":
        """The whole stack at once; a run loads the model first, so that a failed sampler still reports it."""
        return cls.load(cfg, tokenizer).add_trainers()

    @classmethod
    def load(cls, cfg: DictConfig, tokenizer: Any = None) -> "Stack":
        """The model as the run starts from it and its trainable blocks, with the kernels and threads chosen
        for them; add_trainers() then builds the sampler and the estimator."""
        check_fit(cfg)  # a model that cannot fit is refused before any weight loads
        model = load_model(cfg.model, cfg.seed)
        device = input_device(model)
        space = ParamSpace.from_model(model)
        log.info(kernels.select(cfg.kernels, space))
        log.info(threads.apply(device, sum(p.numel() for p in model.parameters())))
        return cls(cfg, model, device, space, tokenizer)

    def add_trainers(self) -> "Stack":
        self.sampler = build_sampler(self.cfg, self.space, self.cfg.seed)
        self.estimator = build_estimator(self.cfg, self.space)
        return self

    @property
    def replayed_sampler(self) -> Any:
        """The sampler where a replay must rebuild its state too (its Plans carry it, e.g. LDSD's mean), else None."""
        return self.sampler if self.sampler.replays_state else None

    def devices(self) -> List[torch.device]:
        return sorted({self.device} | {b.tensor.device for b in self.space.blocks}, key=str)


def check_data_parallel(cfg: DictConfig, world: int) -> None:
    """What data-parallel ZO cannot do, refused in one line before the model loads."""
    if ESTIMATORS[cfg.estimator.name].differentiable:
        raise ZorunError(f"estimator={cfg.estimator.name} backpropagates, and zorun's data parallelism shares "
                         f"loss values only (no gradients); run it in one process, or use a ZO estimator")
    if cfg.model.get("device_map"):
        raise ZorunError(f"model.device_map={cfg.model.device_map} shards one model over the GPUs, torchrun "
                         f"replicates it per rank; use one of the two (drop model.device_map, or run without torchrun)")
    if cfg.budget.batch_size < world:
        raise ZorunError(f"budget.batch_size={cfg.budget.batch_size} is smaller than the {world} ranks: every rank "
                         f"needs examples; raise budget.batch_size to at least {world}")
