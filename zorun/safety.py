"""What a config may make zorun import, call, write and allocate: checked on every job before anything runs.

Hydra instantiates every ``_target_`` under hydra.callbacks (and the launcher
and sweeper), logging.config builds handlers from ``class`` and ``()`` keys
and resolves ``ext://`` names, and hydra.job.env_set reaches every process the
run starts, so one line of a config (an override, a ``--config-dir`` file, a
sweep, the overrides a ``resume=`` replays) could run arbitrary code. The rule
is an allow-list of exact names, never a prefix: a prefix such as ``zorun.``
also admits attribute paths through a module (``zorun.checkpoint.Path.unlink``).

The same pre-flight refuses values that cannot be meant (non-finite floats,
counts beyond any run, seeds the generators reject), names that would leave
the run's directory, and a ``model.path`` that cannot load without a traceback.
Each refusal is one ConfigError line naming the key and the fix.
"""

from __future__ import annotations

import json
import math
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator, Optional, Tuple

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from zorun.errors import ConfigError

# Everything a zorun config may instantiate, by exact dotted name.
CALLBACKS = frozenset({"zorun.sweep.multirun.MultirunCallback"})
LAUNCHERS = frozenset({
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
})
SWEEPERS = frozenset({
    "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
    "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
})
# hydra.sweeper.sampler of the Optuna sweeper (hydra/sweeper/sampler=tpe|random|cmaes|nsgaii|motpe|grid)
SAMPLERS = frozenset(f"optuna.samplers.{name}" for name in
                     ("TPESampler", "RandomSampler", "CmaEsSampler", "NSGAIISampler", "MOTPESampler", "GridSampler"))
# What logging.config may build (``class`` / ``()``), and the only objects ``ext://`` may name.
LOGGING = frozenset({
    "logging.StreamHandler", "logging.FileHandler", "logging.NullHandler",
    "logging.handlers.RotatingFileHandler", "logging.handlers.TimedRotatingFileHandler",
    "logging.handlers.WatchedFileHandler", "logging.Formatter", "logging.Filter", "colorlog.ColoredFormatter",
})
EXTERNAL = frozenset({"ext://sys.stdout", "ext://sys.stderr"})
# hydra.job.env_set: variables that tune a run; anything else (LD_PRELOAD, PYTHONPATH, CUDA_INJECTION64_PATH, ...)
# could make a child process load code, and belongs in the shell that starts zorun.
ENVIRONMENT = frozenset({
    "CUDA_VISIBLE_DEVICES", "CUDA_LAUNCH_BLOCKING", "CUBLAS_WORKSPACE_CONFIG", "PYTORCH_CUDA_ALLOC_CONF",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM", "NCCL_DEBUG",
    "HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE",
    "WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_DIR", "WANDB_SILENT",
})
_CALL_KEYS = ("_args_", "_partial_", "_recursive_", "_convert_")  # change how Hydra calls an allowed class
_LOGGING_ROOTS = ("hydra.job_logging", "hydra.hydra_logging")
_LOG_DIR = "${hydra.runtime.output_dir}/"

# Upper bounds of counts that size memory or time: above them a value is a typo, not a plan.
LIMITS = {
    "budget.steps": 10**9, "budget.epochs": 10**6, "budget.batch_size": 10**6, "budget.eval_batch_size": 10**6,
    "task.num_train": 10**8, "task.num_dev": 10**8, "task.num_test": 10**8, "task.icl_demos": 1024,
    "task.max_new_tokens": 2**16, "model.max_length": 2**24, "model.lora.r": 2**16,
    "model.prefix.num_virtual_tokens": 2**16, "estimator.q": 10**4, "estimator.rank": 2**16, "sampler.k": 10**4,
    "sampler.embed_tokens": 2**20, "sampler.batch_size": 10**6, "metatrain.epochs": 10**6,
}
INFINITE_OK = frozenset({"sampler.ipw_clip"})  # inf means "no clip" there
SEED_MAX = 2**32 - 1  # NumPy's legacy generator (seeded by transformers' set_seed) takes no more
INT_MAX = 2**63 - 1
NAMES = ("model.name", "task.name", "estimator.name", "sampler.name", "budget.name", "logger.name",
         "hydra.job.name")
MAX_NAME = 100  # characters; the run directory's name holds four of them
DEVICE = re.compile(r"^(auto|cpu|mps|(cuda|xpu)(:\d+)?)$")


_NAMES_CALLABLE = ("_target_", "class", "()")  # keys whose value Hydra or logging imports: a leaf even when a list


def _leaves(node: Any, path: str) -> Iterator[Tuple[str, str, Any]]:
    """(dotted key, last key, raw value) of every leaf under node; interpolations stay unresolved."""
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        child = node._get_node(key)
        if key in _NAMES_CALLABLE and isinstance(child, (DictConfig, ListConfig)):
            yield f"{path}{key}", str(key), OmegaConf.to_container(child)
        elif isinstance(child, (DictConfig, ListConfig)) and not child._is_none() and not child._is_missing():
            yield from _leaves(child, f"{path}{key}.")
        else:
            yield f"{path}{key}", str(key), child._value()


def _refuse(path: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"refusing {path}={value}: {why}")


# ------------------------------------------------------------ injection
def check_targets(cfg: DictConfig) -> None:
    """Raise ConfigError on the first name outside the allow-list that Hydra or logging would import or call."""
    for path, key, value in _leaves(cfg, ""):
        parts = path.split(".")
        if key == "_target_":
            _check_target(path, value)
        elif path == "hydra.sweeper.custom_search_space" and value is not None:
            raise _refuse(path, value, "the Optuna sweeper would import and call that name; give the search space "
                                       "as hydra.sweeper.params instead")
        elif path == "hydra.sweeper.sampler._partial_":  # optuna's GridSampler is built once its grid is known
            continue
        elif "_target_" in parts or (parts[0] == "hydra" and set(parts) & set(_CALL_KEYS)):
            raise _refuse(path, value, "that key changes what Hydra instantiates or how it calls it, and zorun's "
                                       "launchers, sweepers and callbacks take no such argument; remove it")
        elif path.startswith(_LOGGING_ROOTS):
            _check_logging(path, key, value)
        elif path.startswith("hydra.job.env_set."):
            if key not in ENVIRONMENT:
                raise _refuse(path, value, f"hydra.job.env_set may set {', '.join(sorted(ENVIRONMENT))}; export "
                                           f"other variables in the shell that starts zorun")
    callbacks = OmegaConf.select(cfg, "hydra.callbacks", default=None) or {}
    for name in callbacks:
        node = callbacks._get_node(name)
        if not isinstance(node, DictConfig) or set(node.keys()) != {"_target_"}:
            raise _refuse(f"hydra.callbacks.{name}", node._value() if not isinstance(node, DictConfig) else
                          OmegaConf.to_yaml(node).strip().replace("\n", ", "),
                          "a callback is {_target_: zorun.sweep.multirun.MultirunCallback} and nothing else; remove it")
    for entry in OmegaConf.select(cfg, "hydra.searchpath", default=None) or []:
        check_searchpath(str(entry))


def _check_target(path: str, value: Any) -> None:
    parts = path.split(".")
    if len(parts) == 4 and parts[:2] == ["hydra", "callbacks"]:
        allowed, what = CALLBACKS, "zorun's callbacks"
    elif path == "hydra.launcher._target_":
        allowed, what = LAUNCHERS, "Hydra's basic, joblib and submitit launchers"
    elif path == "hydra.sweeper._target_":
        allowed, what = SWEEPERS, "Hydra's basic sweeper and the Optuna sweeper"
    elif path == "hydra.sweeper.sampler._target_":
        allowed, what = SAMPLERS, "Optuna's samplers"
    else:
        raise _refuse(path, value, "zorun instantiates nothing from its config there; remove that key")
    if str(value) not in allowed:
        raise _refuse(path, value, f"{path.rsplit('.', 1)[0]} may only name {what} ({', '.join(sorted(allowed))}); "
                                   f"remove that key")


def _check_logging(path: str, key: str, value: Any) -> None:
    text = str(value)
    if key in ("class", "()") and text not in LOGGING:
        raise _refuse(path, value, f"a logging config may only build {', '.join(sorted(LOGGING))}; remove that key")
    if key == "filename":
        name = text.removeprefix(_LOG_DIR).replace("${hydra.job.name}", "job")
        if any(c in name for c in "/\\$") or ".." in name or not name.endswith(".log"):
            raise _refuse(path, value, f"a log file is NAME.log in the run directory ({_LOG_DIR}NAME.log), so that "
                                       f"logging never writes over another file")
    elif "${" in text:
        raise _refuse(path, value, "a logging config may interpolate the log file's name only; write the value out")
    elif text.startswith("ext://") and text not in EXTERNAL:
        raise _refuse(path, value, "ext:// may only name sys.stdout or sys.stderr; remove that key")


def check_searchpath(entry: str) -> None:
    """hydra.searchpath: directories only; a pkg:// entry imports that Python package while composing."""
    if not entry.startswith("file://"):
        raise _refuse("hydra.searchpath", entry, "zorun reads configs from directories only: use file://DIR "
                                                 "or --config-dir DIR")


def check_searchpath_overrides(overrides: list, primary: Optional[Path]) -> None:
    """hydra.searchpath set on the command line or in a --config-dir primary config, checked before composing."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    entries: list = []
    for o in OverridesParser.create().parse_overrides([o for o in overrides if "searchpath" in o]):
        if o.get_key_element() == "hydra.searchpath":
            value = o.value()
            entries += value if isinstance(value, list) else [value]
    if primary is not None and primary.is_file():
        try:
            found = OmegaConf.select(OmegaConf.load(primary), "hydra.searchpath", default=None)
        except (OSError, ValueError, OmegaConfBaseException, yaml.YAMLError):  # composing reports it in one line
            found = None
        entries += list(found) if isinstance(found, ListConfig) else []
    for entry in entries:
        check_searchpath(str(entry))


def _numbers(tree: Any, path: str) -> Iterator[Tuple[str, Any]]:
    """(dotted key, value) of every int and float in a resolved config tree."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        if isinstance(value, (dict, list)):
            yield from _numbers(value, f"{path}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{path}{key}", value


# ---------------------------------------------------------------- names
def check_names(cfg: DictConfig) -> None:
    """Names that become path components (the run directory, log files) stay one component."""
    for key in NAMES:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            _check_name(key, str(value))
    subdir = OmegaConf.select(cfg, "hydra.output_subdir", default=None)
    if subdir is not None:
        _check_name("hydra.output_subdir", str(subdir))


def _check_name(key: str, name: str) -> None:
    bad = next((c for c in name if c in "/\\" or ord(c) < 32 or ord(c) == 127), None)
    if bad is not None or name in ("", ".", "..") or len(name) > MAX_NAME:
        why = (f"it holds {bad!r}" if bad is not None else "it is empty" if not name
               else f"it is longer than {MAX_NAME} characters" if len(name) > MAX_NAME else "it is a relative path")
        raise ConfigError(f"{key}={name!r} cannot name a directory or file ({why}); use letters, digits, '.', '-' "
                          f"and '_'")


# --------------------------------------------------------------- values
def check_values(cfg: DictConfig) -> None:
    """Values that cannot be meant, refused before anything loads: missing (???), non-finite, out of any range."""
    body = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
    missing = sorted(OmegaConf.missing_keys(body))
    if missing:
        raise ConfigError(f"{missing[0]}=??? has no value (??? marks a value you must give); set {missing[0]}=VALUE")
    for path, value in _numbers(OmegaConf.to_container(body, resolve=True), ""):
        key = path.rsplit(".", 1)[-1]
        if isinstance(value, float) and not math.isfinite(value) and path not in INFINITE_OK:
            raise ConfigError(f"{path}={value} is out of range: it must be a finite number")
        if path in LIMITS and value > LIMITS[path]:
            raise ConfigError(f"{path}={value} is out of range: it must be <= {LIMITS[path]} (no run needs more)")
        if isinstance(value, int) and (key == "seed" or key.endswith("_seed")):
            if not 0 <= value <= SEED_MAX:
                raise ConfigError(f"{path}={value} is out of range: a seed is in [0, {SEED_MAX}]")
        elif isinstance(value, int) and abs(value) > INT_MAX:
            raise ConfigError(f"{path}={value} is out of range: it must fit in 64 bits")
    budget, task = cfg.budget, cfg.task
    if task.num_train == 0 and (budget.steps > 0 or budget.get("epochs", 0) > 0):
        raise ConfigError("task.num_train=0 is out of range: training draws its batches from it; give it examples, "
                          "or set budget.steps=0 to only evaluate")
    device = str(cfg.model.device)
    if not DEVICE.match(device):
        raise ConfigError(f"model.device={device} is not a device: choose auto, cpu, cuda or cuda:N")


def check_kernels(cfg: DictConfig) -> None:
    """kernels=triton where the model will sit on the CPU fails only after loading it: refuse it now."""
    import importlib.util
    import os

    if str(getattr(cfg.kernels, "value", cfg.kernels)) != "triton" or os.environ.get("TRITON_INTERPRET", "0") != "0":
        return
    if importlib.util.find_spec("triton") is None:
        raise ConfigError("kernels=triton but triton is not installed; pip install triton, or use kernels=torch")
    device = str(cfg.model.device)
    if device == "auto" and not cfg.model.get("device_map"):
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not device.startswith("cuda") and not cfg.model.get("device_map"):
        raise ConfigError(f"kernels=triton needs CUDA tensors but the model will be on {device}; "
                          f"use kernels=auto or kernels=torch")


# ----------------------------------------------------------- model files
def check_model_dir(path: str) -> None:
    """A local checkpoint that transformers would fail on with a traceback or a hub message, refused in one line."""
    where = f"model.path={path}"
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{where} is not a directory; point it at a saved Hugging Face checkpoint")
    config = folder / "config.json"
    if not config.is_file():
        raise ConfigError(f"{where} has no config.json; point it at a directory written by save_pretrained")
    try:
        if not isinstance(json.loads(config.read_bytes().decode("utf-8")), dict):
            raise ValueError("not a JSON object")
    except (UnicodeDecodeError, ValueError, OSError) as err:
        raise ConfigError(f"{where}: config.json is not a valid JSON object ({_first_line(err)}); restore it "
                          f"from the original checkpoint") from err
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, OSError) as err:
            raise ConfigError(f"{where}: {index.name} is not a valid index ({_first_line(err)}); restore it from "
                              f"the original checkpoint") from err
        missing = sorted(s for s in map(str, shards) if not (folder / s).is_file())
        if missing:
            raise ConfigError(f"{where}: {index.name} lists {missing[0]}, which is missing; copy the checkpoint again")
    weights = sorted(folder.glob("*.safetensors"))
    for file in weights:
        _check_safetensors(where, file)
    if not weights:  # transformers falls back to pickled .bin files only when no safetensors file is there
        for file in sorted(folder.glob("*.bin")):
            _check_pickle(where, file)


def _check_safetensors(where: str, file: Path) -> None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="numpy"):
            pass
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"{where}: {file.name} is truncated or corrupted ({_first_line(err)}); copy the "
                          f"checkpoint again") from err


def _check_pickle(where: str, file: Path) -> None:
    """Unpickle with torch's restricted loader onto the meta device: tensors only, no data read, no code run."""
    import pickle

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(file, map_location="meta", weights_only=True, mmap=zipfile.is_zipfile(file))
    except pickle.UnpicklingError as err:
        raise ConfigError(f"{where}: {file.name} is a pickle holding more than tensors, which loading would run "
                          f"as code; convert the checkpoint to safetensors where you trust it") from err
    except (OSError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as err:
        raise ConfigError(f"{where}: {file.name} cannot be read ({_first_line(err)}); copy the checkpoint "
                          f"again") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
