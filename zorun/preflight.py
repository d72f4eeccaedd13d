"""The pre-flight: compose every job of a command as Hydra will, and check it before anything runs.

Hydra reports a bad override as several lines and exits 1, and composes the
config only inside its own main, after creating the run directory. So
:func:`check_command` composes the jobs first, from the configs Hydra will
read (zorun's ``conf/``, or ``--config-dir``/``--config-name``/``--config-path``),
checks what they may instantiate (:mod:`zorun.safety`), their keys, names,
values and files (:func:`check_job`), and raises one ZorunError on the first
problem. A multirun's grid is expanded as the basic sweeper will; a plugin
sweeper (Optuna) draws its values as it goes, so the pre-flight checks the
fixed part and each job checks its own values when it starts (zorun.commands.cli).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from zorun.config import ConfigError, RootConfig, register_configs, validate, validate_metatrain
from zorun.identity import override_root
from zorun.safety import (check_kernels, check_model_dir, check_names, check_searchpath_overrides, check_targets,
                          check_values)
from zorun.paths import CONF_DIR
from zorun.sweep.multirun import incompatibility, register_sweeps
from zorun.tracking.console import preflight_progress
from zorun.tracking.files import check_writable

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
# summary.json's numbers a sweeper may optimise (optimized_metric=selected.dev.accuracy, test.f1, train_loss, ...)
OBJECTIVES = ("selected", "dev", "test", "dev_initial", "train_loss", "wall_s", "peak_mem_bytes", "forward_passes")


register_configs()
register_sweeps()


@dataclasses.dataclass
class Source:
    """Where Hydra reads the configs from, worked out from the command line as Hydra's own main does."""

    config_name: str
    task_name: str
    search_path: Any  # hydra's ConfigSearchPath
    primary: Optional[Path]  # the primary config file when it is a file on disk

    @classmethod
    def of(cls, args: Any, app: Callable, config_name: str) -> "Source":
        """From Hydra's parsed command line (get_args_parser) and the @hydra.main task function."""
        from hydra._internal.utils import (create_automatic_config_search_path,
                                           detect_calling_file_or_module_from_task_function, detect_task_name,
                                           validate_config_path)
        from hydra.core.config_search_path import SearchPathQuery

        calling_file, calling_module = detect_calling_file_or_module_from_task_function(getattr(app, "__wrapped__", app))
        config_path = args.config_path if args.config_path is not None else CONF_DIR
        try:
            validate_config_path(config_path)
        except ValueError as err:
            raise ConfigError(f"--config-path={config_path}: {' '.join(str(err).split())}") from err
        name = args.config_name or config_name
        search_path = create_automatic_config_search_path(calling_file, calling_module, config_path)
        primary = Path(config_path, f"{name}.yaml")
        if args.config_dir is not None:
            folder = os.path.abspath(os.path.expanduser(args.config_dir))
            if not os.path.isdir(folder):
                raise ConfigError(f"--config-dir {args.config_dir}: no such directory; give the folder that holds "
                                  f"your configs")
            search_path.prepend(provider="command-line", path=f"file://{folder}",
                                anchor=SearchPathQuery(provider="schema"))
            if Path(folder, f"{name}.yaml").is_file():
                primary = Path(folder, f"{name}.yaml")
        return cls(name, detect_task_name(calling_file, calling_module), search_path, primary)

    @classmethod
    def default(cls, config_name: str = "config") -> "Source":
        """zorun's own conf/ (what `zorun` reads without --config-* flags)."""
        from hydra._internal.utils import create_automatic_config_search_path

        return cls(config_name, "cli", create_automatic_config_search_path(None, "zorun.commands.cli", CONF_DIR),
                   Path(CONF_DIR, f"{config_name}.yaml"))


@contextmanager
def composing(source: Source) -> Iterator[Callable[[List[str]], DictConfig]]:
    """compose(overrides) -> the job's config with its hydra node, as Hydra will compose it for the run."""
    from hydra._internal.hydra import Hydra
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    GlobalHydra.instance().clear()
    hydra_app = Hydra.create_main_hydra2(task_name=source.task_name, config_search_path=source.search_path)
    try:
        yield lambda overrides: hydra_app.compose_config(source.config_name, list(overrides), run_mode=RunMode.RUN,
                                                         from_shell=True, with_log_configuration=False)
    finally:
        GlobalHydra.instance().clear()


def check_known_keys(node: DictConfig, prefix: str = "") -> None:
    """Refuse keys a `+key=value` override added outside a group's schema."""
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        fields = {f.name for f in dataclasses.fields(schema)}
        for key in node.keys():
            if key not in fields and key != "hydra":
                raise ConfigError(f"unknown key '{prefix}{key}': check the spelling; `zorun --cfg job` lists every key")
    for key in node.keys():
        child = node._get_node(key)
        if key != "hydra" and isinstance(child, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(child)):
            check_known_keys(child, f"{prefix}{key}.")


def check_job(cfg: DictConfig, config_name: str = "config", files: bool = True) -> None:
    """One job's config: what it may instantiate first, then keys, names, values and files; ZorunError on the first.

    Called by the pre-flight on each composed job, and again by the job itself
    at its start on the config Hydra hands it (a plugin sweeper's values), there
    with files=False: the run reads its model and data files with the same checks."""
    check_targets(cfg)  # nothing outside the allow-list is ever instantiated
    if not issubclass(OmegaConf.get_type(cfg) or object, RootConfig):
        raise ConfigError(f"config '{config_name}' is not a zorun config: its defaults list must start with "
                          f"zorun_schema (or include zorun's config), as conf/config.yaml does")
    check_known_keys(cfg)
    check_names(cfg)
    check_values(cfg)
    metric = cfg.get("optimized_metric")
    if metric and str(metric).split(".")[0] not in OBJECTIVES:
        raise ConfigError(f"optimized_metric={metric} names no number of summary.json; use a dotted key under "
                          f"{', '.join(OBJECTIVES)} (e.g. selected.dev.accuracy)")
    validate(cfg)
    if config_name == "metatrain":
        validate_metatrain(cfg)
    check_kernels(cfg)
    if files:
        check_files(cfg)


def check_files(cfg: DictConfig) -> None:
    """A local model folder and a local data file, read as the run will read them: a bad one is refused before
    Hydra creates the run directory."""
    model, task = cfg.model, cfg.task
    if model.get("path") and str(getattr(model.init, "value", model.init)) == "pretrained":
        check_model_dir(str(model.path))
    if task.name == "local" and task.get("path"):
        from zorun.tasks.local import read_jsonl

        read_jsonl(Path(str(task.path)), str(getattr(task.type, "value", task.type)), list(task.candidates))


@dataclasses.dataclass
class Checked:
    """What the pre-flight found: the number of jobs, and a single run's composed config (None for a multirun)."""

    jobs: int
    single: Optional[DictConfig]


def preflight(overrides: List[str], multirun: bool, config_name: str = "config", source: Optional[Source] = None,
              check_memory: bool = True) -> int:
    """Compose and validate every job; return the number of jobs. Raises on the first bad one.

    config_name="metatrain" checks zorun-metatrain's config (its estimator is the teacher, not a ZO one).
    check_memory=False (--cfg: the config is only printed) skips the memory check of a single run."""
    return check_command(overrides, multirun, source or Source.default(config_name), check_memory).jobs


def check_command(overrides: List[str], multirun: bool, source: Source, check_memory: bool = True) -> Checked:
    """Every job of a command line, composed and checked; multirun also when the config itself sets hydra.mode."""
    from hydra.types import RunMode

    check_searchpath_overrides(overrides, source.primary)
    with composing(source) as compose:
        first = compose([o for o in overrides if not _is_sweep(o)] if multirun else overrides)
        check_targets(first)  # before the sweeper's settings are read
        multirun = multirun or first.hydra.mode == RunMode.MULTIRUN
        jobs = job_overrides(overrides, multirun, lambda ovr, return_hydra_config=True: compose(ovr))
        incompatible: Dict[str, List[str]] = {}
        with preflight_progress(len(jobs)) as counted:
            for job in counted(jobs):
                cfg = compose(job) if multirun else first
                check_job(cfg, source.config_name)
                if source.config_name != "config":
                    continue
                reason = incompatibility(cfg)
                if reason is not None and not (multirun and cfg.skip_incompatible):
                    raise ConfigError(reason)
                if reason is not None:
                    incompatible.setdefault(reason, []).append(f"{cfg.sampler.name} x {cfg.estimator.name}")
                elif cfg.sampler.name == "pertnn":
                    from zorun.samplers.pertnn_io import check_exists

                    check_exists(cfg.sampler.checkpoint)
                if check_memory and not multirun and source.config_name == "config":  # a grid's jobs check themselves
                    from zorun.models.fit import check_fit

                    check_fit(cfg)
        if sum(map(len, incompatible.values())) == len(jobs) > 0:
            raise ConfigError(f"every job of the grid is incompatible: {next(iter(incompatible))}")
        for reason, pairs in incompatible.items():
            print(f"zorun: {len(pairs)} of {len(jobs)} jobs not run ({', '.join(sorted(set(pairs)))}): {reason}",
                  file=sys.stderr)
        check_writable(Path(str(first.hydra.sweep.dir if multirun else first.hydra.run.dir)))
    return Checked(len(jobs), None if multirun else first)


def _is_sweep(override: str) -> bool:
    return OverridesParser.create().parse_override(override).is_sweep_override()


def job_overrides(overrides: List[str], multirun: bool, compose: Callable[..., DictConfig]) -> List[List[str]]:
    """A command line as one override list per job, as Hydra's basic sweeper expands a multirun.

    compose(overrides, return_hydra_config=True) composes a config. A plugin
    sweeper (hydra/sweeper=optuna) chooses its values while it runs: its jobs
    are checked as they start, and here only its fixed part, after refusing
    a search over hydra.* (what the allow-list guards)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    if not multirun:
        return [overrides]
    parser = OverridesParser.create()
    sweeper = compose([o for o in overrides if not _is_sweep(o)], return_hydra_config=True).hydra.sweeper
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    if sweeper.get("_target_") != BASIC_SWEEPER:
        for line in params + [o for o in overrides if _is_sweep(o)]:
            if override_root(line) == "hydra":
                raise ConfigError(f"refusing the search over '{line.split('=')[0]}': a sweeper may search the "
                                  f"run's keys, not hydra.*; fix that key on the command line instead")
        return [[o for o in overrides if not _is_sweep(o)]]
    batches = BasicSweeper.split_arguments(parser.parse_overrides(params + overrides), None)
    return [job for batch in batches for job in batch]


def check_composable(overrides: List[str], source: Source) -> None:
    """--info, --hydra-help, --shell-completion run nothing, but Hydra composes the config: its targets are checked."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    check_searchpath_overrides(overrides, source.primary)
    with composing(source) as compose:
        try:
            cfg = compose(overrides)
        except (HydraException, OmegaConfBaseException):  # Hydra reports its own composition errors
            return
        check_targets(cfg)
