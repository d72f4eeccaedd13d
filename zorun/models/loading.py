"""Load a preset: pretrained weights from model.path / the hub, or random init from model.arch.

Every failure a user can cause (no network, missing path, gated repo) ends
in a ZorunError naming the model and the fix, never a transformers traceback.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from zorun.errors import ZorunError
from zorun.models import placement
from zorun.models.adapters import wrap
from zorun.models.tokenizer import build_tiny_tokenizer

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ZorunError(f"model.device={name} but no CUDA device is visible; use model.device=cpu or auto")
    return dev


def _source(cfg: DictConfig) -> str:
    if cfg.path:
        if not Path(cfg.path).is_dir():
            raise ZorunError(f"model.path={cfg.path} is not a directory; point it at a saved Hugging Face checkpoint")
        return str(cfg.path)
    if not cfg.hf_id:
        raise ZorunError(f"model={cfg.name} has neither model.path nor model.hf_id; set model.path=/local/checkpoint")
    return cfg.hf_id


def _offline_hint(cfg: DictConfig, what: str, err: Exception) -> ZorunError:
    if "trust_remote_code" in str(err):  # the repository ships Python code; transformers refuses to run it
        return ZorunError(f"model={cfg.name} ({_source(cfg)}) needs its repository's own Python code to load; "
                          f"read that code, then set model.trust_remote_code=true to run it")
    return ZorunError(
        f"cannot load the {what} of model={cfg.name} ({_source(cfg)}) from the local cache or the hub "
        f"({type(err).__name__}); download it where there is network and pass model.path=/local/copy, "
        f"or use model.init=random for shape-only runs"
    )


def load_model(cfg: DictConfig, seed: int) -> torch.nn.Module:
    """The model on its device(s) (model.device, or model.device_map over the GPUs), with its adapter (model.peft)."""
    dtype = getattr(torch, cfg.dtype.value if hasattr(cfg.dtype, "value") else str(cfg.dtype))
    device_map = placement.device_map(cfg)
    device = torch.device("cpu") if device_map else resolve_device(cfg.device)
    if dtype != torch.float32 and device.type == "cpu":
        log.warning("model.dtype=%s on CPU: supported, but slow and not what the GPU kernels run", cfg.dtype)
    if str(cfg.init.value if hasattr(cfg.init, "value") else cfg.init) == "random":
        arch = OmegaConf.to_container(cfg.arch, resolve=True)
        config = AutoConfig.for_model(**arch)
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(_source(cfg), dtype=dtype, device_map=device_map,
                                                         trust_remote_code=cfg.trust_remote_code)
        except (OSError, ValueError) as err:
            raise _offline_hint(cfg, "weights", err) from err
        if not device_map:
            model = model.to(device)
    if device_map and str(getattr(cfg.init, "value", cfg.init)) == "random":
        model = placement.dispatch(model, device_map, dtype)
    model = wrap(model, cfg, seed)
    model.eval()  # ZO probes are deterministic forwards: no dropout (as MeZO)
    return model


def load_tokenizer(cfg: DictConfig) -> PreTrainedTokenizerBase:
    if cfg.tokenizer == "builtin":
        return build_tiny_tokenizer()
    source = cfg.tokenizer or (cfg.path if cfg.path else cfg.hf_id)
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as err:
        if str(getattr(cfg.init, "value", cfg.init)) == "random":
            log.warning("tokenizer of %s unavailable offline; random-init run uses the built-in tokenizer", cfg.name)
            return build_tiny_tokenizer()
        raise _offline_hint(cfg, "tokenizer", err) from err
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
