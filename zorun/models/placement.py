"""model.device_map: a model too large for one GPU, placed layer by layer over the visible GPUs by accelerate.

Pretrained weights go through ``from_pretrained(device_map=...)``, which loads
each shard straight onto its device. A random-init model (model.init=random,
for speed and memory runs at real shapes) is built on the CPU from the seed,
then placed with accelerate's ``infer_auto_device_map`` and ``dispatch_model``,
which add the hooks that move activations between devices. The kernels take
each block on the device it sits on (one launch per device and dtype); the
run puts its batches on the device of the input embeddings.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def device_map(cfg: DictConfig) -> Optional[str]:
    """The accelerate strategy to place the model with, or None (one device: model.device)."""
    if not cfg.get("device_map"):
        return None
    if not torch.cuda.is_available():
        log.warning("model.device_map=%s: no CUDA device is visible, so the whole model stays on cpu",
                    cfg.device_map)
        return None
    return str(cfg.device_map)


def dispatch(model: torch.nn.Module, strategy: str, dtype: torch.dtype) -> torch.nn.Module:
    """Place a model built on the CPU over the GPUs, whole transformer blocks per device."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = getattr(model, "_no_split_modules", None) or []
    max_memory = None
    if strategy != "sequential":
        max_memory = get_balanced_memory(model, dtype=dtype, no_split_module_classes=no_split,
                                         low_zero=strategy == "balanced_low_0")
    placed = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=dtype)
    log.info("model.device_map=%s: %s", strategy, placed)
    return dispatch_model(model, device_map=placed)


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a batch goes: the device of the input embeddings (the first device of a placed model)."""
    embeddings = model.get_input_embeddings()
    return embeddings.weight.device if embeddings is not None else next(model.parameters()).device
