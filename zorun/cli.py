"""The `zorun` command: a Hydra app with a pre-flight that turns config errors into one line.

Hydra reports a bad override as several lines and exits 1. Before handing
over to Hydra, :func:`main` composes every job of the command (one, or the
whole multirun grid) with Hydra's compose API and runs :func:`validate`; any
problem is printed as ``zorun: error: ...`` with exit code 2, before any model
loads. ``HYDRA_FULL_ERROR=1`` re-raises with the full traceback instead.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

import hydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from zorun.config import ConfigError, register_configs, validate, validate_metatrain
from zorun.errors import ZorunError
from zorun.multirun import incompatibility, register_sweeps, sweeps_dir
from zorun.paths import CONF_DIR
from zorun.resume import expand_resume
from zorun.safety import check_targets
from zorun.tracking.console import preflight_progress
from zorun.tracking.files import check_writable

GROUPS = ("model", "task", "estimator", "sampler", "budget", "logger")
EXIT_USAGE = 2


register_configs()
register_sweeps()


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


def job_overrides(overrides: List[str], multirun: bool, compose) -> List[List[str]]:
    """Expand a command line into one override list per job, as Hydra's basic sweeper does."""
    if not multirun:
        return [overrides]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parser = OverridesParser.create()
    plain = [o for o in parser.parse_overrides(overrides) if not o.is_sweep_override()]
    hydra_cfg = compose([o.input_line for o in plain], return_hydra_config=True).hydra
    params = [f"{k}={v}" for k, v in (hydra_cfg.sweeper.get("params") or {}).items()]
    batches = BasicSweeper.split_arguments(parser.parse_overrides(params + overrides), None)
    return [job for batch in batches for job in batch]


def preflight(overrides: List[str], multirun: bool, config_name: str = "config", check_memory: bool = True) -> int:
    """Compose and validate every job; return the number of jobs. Raises on the first bad one.

    config_name="metatrain" checks zorun-metatrain's config (its estimator is the teacher, not a ZO one).
    check_memory=False (--cfg: the config is only printed) skips the memory check of a single run."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name="zorun"):
        def _compose(ovr, return_hydra_config=False):
            return compose(config_name, overrides=list(ovr), return_hydra_config=return_hydra_config)

        jobs = job_overrides(overrides, multirun, _compose)
        incompatible: Dict[str, List[str]] = {}
        with preflight_progress(len(jobs)) as counted:
            for job in counted(jobs):
                cfg = _compose(job, return_hydra_config=True)
                check_targets(cfg)  # before anything else: nothing but zorun.* is ever instantiated
                check_known_keys(cfg)
                validate(cfg)
                if config_name == "metatrain":
                    validate_metatrain(cfg)
                    continue
                reason = incompatibility(cfg)
                if reason is not None and not (multirun and cfg.skip_incompatible):
                    raise ConfigError(reason)
                if reason is not None:
                    incompatible.setdefault(reason, []).append(f"{cfg.sampler.name} x {cfg.estimator.name}")
                elif cfg.sampler.name == "pertnn":
                    from zorun.samplers.pertnn_io import check_exists

                    check_exists(cfg.sampler.checkpoint)
                if check_memory and not multirun and config_name == "config":  # a grid's jobs check themselves
                    from zorun.models.fit import check_fit

                    check_fit(cfg)
        if sum(map(len, incompatible.values())) == len(jobs) > 0:
            raise ConfigError(f"every job of the grid is incompatible: {next(iter(incompatible))}")
        for reason, pairs in incompatible.items():
            print(f"zorun: {len(pairs)} of {len(jobs)} jobs not run ({', '.join(sorted(set(pairs)))}): {reason}",
                  file=sys.stderr)
        check_writable(Path(str(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir)))
    return len(jobs)


def resolved_run_dir(overrides: List[str]) -> str:
    """The run directory Hydra will use for these overrides (its ${now:...} resolved here, once)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name="zorun"):
        return str(compose("config", overrides=list(overrides), return_hydra_config=True).hydra.run.dir)


def data_parallel_argv(argv: List[str], overrides: List[str], multirun: bool) -> List[str]:
    """Under torchrun: every rank runs in rank 0's run directory, and only rank 0 writes Hydra's files there."""
    from zorun.distributed import DataParallel

    if multirun:
        raise ZorunError("-m under torchrun would run every job on every rank; launch each job with torchrun, "
                         "or a multirun without torchrun (hydra/launcher=submitit_slurm for clusters)")
    dp = DataParallel.from_env()
    run_dir = dp.broadcast(resolved_run_dir(overrides) if dp.is_main else None)
    quoted = run_dir.replace("\\", "\\\\").replace("'", "\\'")
    extra = [f"hydra.run.dir='{quoted}'"]
    if not dp.is_main:  # no .hydra/ and no log file from the other ranks
        extra += ["hydra.output_subdir=null", "hydra/job_logging=disabled"]
    return list(argv) + extra


def usage() -> str:
    lines = [
        "zorun: zeroth-order (forward-only) fine-tuning of language models, driven by Hydra.",
        "",
        "usage: zorun [group=option ...] [key=value ...]        one run",
        "       zorun -m group=a,b key=1,2                      a multirun sweep (one job per combination)",
        "       zorun --cfg job [overrides]                     print the composed config",
        "",
        "config groups (group=option; the default is marked *):",
    ]
    defaults = {"model": "tiny", "task": "synthetic", "estimator": "mezo", "sampler": "uniform",
                "budget": "demo", "logger": "wandb"}
    for group in GROUPS:
        opts = [o + ("*" if o == defaults[group] else "") for o in group_options(group)]
        lines.append(f"  {group:<10} {', '.join(opts)}")
    lines += [
        "",
        f"sweeps:     zorun -m +sweep=NAME   NAME: {', '.join(group_options('sweep'))} (see sweeps/ and docs)",
        "report:     zorun-report SWEEP_DIR   (also runs at the end of every multirun)",
        "",
        "root keys: seed (int, seeds z, data order and random init);",
        "           force (bool, multirun: re-run jobs that already completed with the same config);",
        "           skip_incompatible (bool, multirun: record refused sampler x estimator pairs as n/a);",
        "           kernels (auto|triton|torch: the perturb/update backend, chosen at setup and logged);",
        "           resume=RUN_DIR (continue a run from its newest checkpoint; relaunching into the dir does too)",
        "replay:     zorun-replay RUN_DIR   (the fine-tuned parameters from the base model + trajectory.jsonl)",
        "export:     zorun-export RUN_DIR [--step N] [--out DIR]   (a from_pretrained folder of any step)",
        "outputs: <run dir>/metrics.jsonl, summary.json, model/ or adapter/, .hydra/ (see README, docs/outputs.md)",
        "Hydra's own flags (--multirun, --cfg, --resolve, --info, --hydra-help, ...) work as usual.",
    ]
    return "\n".join(lines)


def _hydra_argv_parser():
    from hydra._internal.utils import get_args_parser

    return get_args_parser()


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> Optional[dict]:
    from zorun.multirun import record_if_incompatible, skip_if_completed

    previous = skip_if_completed(cfg) or record_if_incompatible(cfg)  # before importing the run stack
    if previous is not None:
        return previous
    from zorun.run import execute

    return execute(cfg)


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(usage())
        return
    run_app(_app, "config", argv, "zorun")


def run_app(app, config_name: str, argv: List[str], prog: str) -> None:
    """Pre-flight every job of the command line (one-line errors, exit 2), then hand over to the Hydra app."""
    args = _hydra_argv_parser().parse_args(argv)
    if not (args.hydra_help or args.info or args.shell_completion):
        try:
            overrides = args.overrides
            if config_name == "config":
                overrides = expand_resume(args.overrides, args.multirun)
                if overrides != args.overrides:  # resume=RUN_DIR: the run's own overrides first, then these
                    argv = [a for a in argv if a not in args.overrides] + overrides
            preflight(overrides, args.multirun, config_name, check_memory=not args.cfg)
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun
                if config_name != "config":
                    raise ZorunError(f"{prog} runs in one process (its meta-gradient is not data-parallel); "
                                     "launch it without torchrun")
                argv = data_parallel_argv(argv, overrides, args.multirun)
        except (ZorunError, HydraException, OmegaConfBaseException) as ex:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"{prog}: error: {one_line(ex)}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
    if args.cfg == "job" and not args.resolve:  # the values a run gets, not the recipes' ${zorun.by_peft:...}
        argv = [*argv, "--resolve"]
    sys.argv = [sys.argv[0]] + list(argv)
    app()
