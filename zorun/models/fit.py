"""Will the model fit? A lower bound on the memory a run needs, checked before any weight loads.

The bound is the weights (parameters × bytes of model.dtype) plus the state
the estimator and sampler keep per trainable parameter (fp32 momentum,
moments or Hessian, the first-order gradients, LDSD's mean). Activations,
the CUDA context and fragmentation come on top, so a model refused here
cannot run, and one accepted may still not. The count comes from model.arch
(built on the meta device, nothing allocated) or from a local checkpoint's
config; a model whose architecture is not known locally is not checked.
Adapters (model.peft) train few parameters, so their state is left out.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

from zorun.errors import ZorunError

log = logging.getLogger(__name__)

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# float32 bytes of state per trainable parameter, per ZO estimator (zorun/estimators/; lozo's factors are small)
ZO_STATE = {"zo-sgd-momentum": 4, "zo-adam": 8, "hizoo": 4}
# copies, in the weights' dtype, that a first-order estimator keeps: the gradient, then torch's optimizer state
FO_COPIES = {"fo-sgd": 1, "fo-adam": 3}


def _value(option) -> str:
    return str(getattr(option, "value", option))


def parameter_count(model: DictConfig) -> Optional[int]:
    """Parameters of the configured architecture, counted on the meta device; None when it is not known here."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        if model.get("path") and Path(str(model.path)).is_dir():
            config = AutoConfig.from_pretrained(str(model.path), trust_remote_code=model.trust_remote_code)
        elif model.get("arch") and not model.get("gguf_file"):
            config = AutoConfig.for_model(**OmegaConf.to_container(model.arch, resolve=True))
        else:
            return None
        with torch.device("meta"):
            net = AutoModelForCausalLM.from_config(config)
    except Exception as err:  # noqa: BLE001  transformers' strict config validation raises its own error types
        log.info("memory check skipped: the architecture of model=%s is not known here (%s)", model.name, err)
        return None
    return sum(p.numel() for p in net.parameters())


def state_bytes_per_parameter(cfg: DictConfig) -> float:
    """Bytes the estimator and sampler keep per trainable parameter, beyond the weights."""
    est = cfg.estimator
    per = float(ZO_STATE.get(est.name, 0))
    if est.name in FO_COPIES:
        copies = FO_COPIES[est.name] + (1 if est.name == "fo-sgd" and est.momentum else 0)
        per = copies * DTYPE_BYTES[_value(cfg.model.dtype)]
    if cfg.sampler.name == "ldsd":
        per += 4 * float(cfg.sampler.mean_fraction)
    return per


def required_bytes(cfg: DictConfig, params: int) -> int:
    weights = params * DTYPE_BYTES[_value(cfg.model.dtype)]
    trained = params if _value(cfg.model.peft) == "none" else 0
    return int(weights + trained * state_bytes_per_parameter(cfg))


def free_bytes(model: DictConfig) -> Optional[Tuple[int, str]]:
    """(bytes free where the model goes, its name): the visible GPUs' free memory, or the CPU's available RAM."""
    device = model.get("device", "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and torch.cuda.is_available():
        if model.get("device_map"):
            ids = list(range(torch.cuda.device_count()))
        else:
            ids = [torch.device(device).index or 0]
        return sum(torch.cuda.mem_get_info(i)[0] for i in ids), f"{len(ids)} GPU{'s' if len(ids) > 1 else ''}"
    if device != "cpu":
        return None
    return cpu_available(), "this machine's RAM"


def cpu_available() -> Optional[int]:
    """MemAvailable from /proc/meminfo (Linux), else the free physical pages."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fit(cfg: DictConfig) -> None:
    """Refuse in one line, before loading, a model whose weights and optimizer state exceed the free memory."""
    params = parameter_count(cfg.model)
    where = free_bytes(cfg.model)
    if params is None or where is None or where[0] is None:
        return
    need, (free, place) = required_bytes(cfg, params), where
    log.info("memory check: model=%s needs at least %.1f GiB (%.2fB parameters in %s), %s has %.1f GiB free",
             cfg.model.name, need / GIB, params / 1e9, _value(cfg.model.dtype), place, free / GIB)
    if need > free:
        dtype, state = _value(cfg.model.dtype), need - params * DTYPE_BYTES[_value(cfg.model.dtype)]
        fixes = ["a smaller model"] + (["model.dtype=bfloat16"] if dtype == "float32" else []) + \
            (["model.peft=lora"] if _value(cfg.model.peft) == "none" else []) + \
            (["more GPUs (model.device_map=auto)"] if "GPU" in place else ["a machine with more memory"])
        raise ZorunError(
            f"model={cfg.model.name} needs at least {need / GIB:.1f} GiB ({params / 1e9:.2f}B parameters in {dtype}"
            f"{f' + {state / GIB:.1f} GiB of {cfg.estimator.name} state' if state else ''}) and {place} has "
            f"{free / GIB:.1f} GiB free; use {', '.join(fixes[:-1])} or {fixes[-1]}")
