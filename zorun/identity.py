"""A run's identity: which keys make two configs the same run, its hash and method label, path-safe names.

A leaf (no zorun imports): the run, resume, the multirun's skip of completed
jobs, the sweep report and W&B all ask it, so none of them imports another
for it. Resolving a config needs the ``zorun.*`` resolvers, which
:mod:`zorun.config` registers; the caller has imported it.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Dict, Mapping

from omegaconf import DictConfig, OmegaConf

# Keys that change how a run is logged, not what it computes: not part of its identity.
NOT_IDENTITY = ("hydra", "logger", "force", "skip_incompatible", "resume", "optimized_metric")
MAX_DIRNAME = 200  # bytes; most file systems allow 255
SWEEP_RECORD = "sweep.json"  # in each job directory of a multirun: the launch command it belongs to


def safe_dirname(text: str) -> str:
    """Hydra's override_dirname with '/' and other unsafe characters replaced, and bounded length."""
    name = re.sub(r"[^A-Za-z0-9._=,+@\-\[\]]", "_", text) or "default"
    if len(name.encode()) > MAX_DIRNAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = name[: MAX_DIRNAME - 12] + "~" + digest
    return name


def override_root(override: str) -> str:
    """The top-level key an override line sets: `+estimator.lr=1e-6` -> estimator, `hydra/launcher=x` -> hydra."""
    return re.split(r"[./=]", override.lstrip("+~"), maxsplit=1)[0]


def identity(cfg: DictConfig, drop: tuple = ()) -> Dict[str, Any]:
    """The resolved config without the keys that do not change results (and `drop`)."""
    keep = [key for key in cfg.keys() if key not in NOT_IDENTITY + tuple(drop)]
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, keep), resolve=True, enum_to_str=True)


def config_hash(cfg: DictConfig, drop: tuple = ()) -> str:
    text = json.dumps(identity(cfg, drop), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def method_label(cfg: Mapping[str, Any]) -> str:
    """The column a job belongs to in a paper table: zero-shot, icl, or estimator[-peft][+sampler]."""
    task, model = cfg["task"], cfg["model"]
    if cfg["budget"]["steps"] == 0:
        return "icl" if task.get("icl_demos") else "zero-shot"
    label = cfg["estimator"]["name"]
    peft = model.get("peft")
    if isinstance(peft, str) and peft != "none":
        label += f"-{peft}"
    sampler = cfg["sampler"]["name"]
    return label if sampler == "uniform" else f"{label}+{sampler}"
