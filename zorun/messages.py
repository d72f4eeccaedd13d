"""A refused command line as one message that names the key, the problem and the fix.

Hydra and OmegaConf report a bad override as several lines (and a
traceback); every zorun command, and zorun-bench, print :func:`one_line` of
it instead, after ``<prog>: error:``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List

from hydra.errors import MissingConfigException
from omegaconf.errors import OmegaConfBaseException

from zorun.errors import ZorunError
from zorun.sweep.multirun import sweeps_dir
from zorun.paths import CONF_DIR

GROUPS = ("model", "task", "estimator", "sampler", "budget", "logger")


def group_options(group: str) -> List[str]:
    folder = sweeps_dir() if group == "sweep" else Path(CONF_DIR, group)
    return sorted(p.stem for p in folder.glob("*.yaml"))


def _flatten(text: str) -> str:
    return " ".join(text.split())


def one_line(ex: BaseException) -> str:
    """The shortest message that names the key, the problem and the fix."""
    if isinstance(ex, ZorunError):
        return str(ex)
    msg = str(ex)
    missing = re.search(r"Could not find '([^/']+)/([^']+)'", msg)
    if isinstance(ex, MissingConfigException) and missing:
        group, option = missing.groups()
        if group == "sweep":
            return f"unknown sweep '{option}': choose +sweep=<one of: {', '.join(group_options('sweep'))}>"
        if group in GROUPS:
            opts = ", ".join(group_options(group))
            return f"unknown {group} '{option}': choose {group}=<one of: {opts}>"
    if isinstance(ex, MissingConfigException) and "Cannot find primary config" in msg:
        return _flatten(msg)
    cause = ex.__cause__ if ex.__cause__ is not None else ex
    if isinstance(cause, OmegaConfBaseException):
        key = getattr(cause, "full_key", None) or ""
        text = str(cause).split("\n")[0]
        if "not in" in text or "Key '" in text and "not in" in text:
            return f"unknown key '{key}': check the spelling; `zorun --cfg job` lists every key"
        allowed = re.search(r"expected one of \[(.*)\]", text)
        if allowed:
            return f"{key}: invalid value; allowed values: {allowed.group(1)}"
        return f"{key}: {text}" if key else _flatten(text)
    could_not = re.search(r"Could not override '([^']+)'", msg)
    if could_not:
        return f"unknown key '{could_not.group(1)}': check the spelling; `zorun --cfg job` lists every key"
    return _flatten(msg)
