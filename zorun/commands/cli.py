"""The `zorun` command: a Hydra app whose bad input is one line and exit 2, before anything runs.

Before handing over to Hydra, :func:`run_app` pre-flights the command
(:mod:`zorun.preflight`: every job composed from the configs Hydra will read
and checked); a single run then takes its directory's lock and is checked
against what the directory holds (:mod:`zorun.resume`). Inside Hydra each job
checks the config it is handed again at its start (a plugin sweeper's values).
Any problem is printed as ``zorun: error: ...`` with exit code 2, and an
existing run directory is left as it was. ``HYDRA_FULL_ERROR=1`` re-raises
with the full traceback instead.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import hydra
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from zorun.distributed import DataParallel
from zorun.errors import ZorunError
from zorun.messages import GROUPS, group_options, one_line
from zorun.paths import CONF_DIR
from zorun.preemption import StopSignals
from zorun.preflight import Source, check_command, check_composable, check_job
from zorun.resume import Snapshot, check_run_dir, expand_resume, lock_run_dir, unlock_run_dir
from zorun.sweep.multirun import record_if_incompatible, skip_if_completed

EXIT_USAGE = 2


def pin_run_dir(argv: List[str], run_dir: str) -> List[str]:
    """argv with hydra.run.dir fixed: the directory the pre-flight checked and locked is the one Hydra uses."""
    quoted = run_dir.replace("\\", "\\\\").replace("'", "\\'")
    return list(argv) + [f"hydra.run.dir='{quoted}'"]


def data_parallel_argv(argv: List[str], run_dir: str, multirun: bool) -> List[str]:
    """Under torchrun: every rank runs in rank 0's run directory, and only rank 0 writes Hydra's files there."""
    if multirun:
        raise ZorunError("-m under torchrun would run every job on every rank; launch each job with torchrun, "
                         "or a multirun without torchrun (hydra/launcher=submitit_slurm for clusters)")
    dp = DataParallel.from_env()
    extra = pin_run_dir([], dp.broadcast(run_dir if dp.is_main else None))
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
    """Hydra's command-line parser, whose usage errors are one line too."""

    def error(message: str) -> None:
        raise ZorunError(f"{message}; `zorun --help` lists the commands")

    parser = get_args_parser()
    parser.error = error
    return parser


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> float:
    """One job: its lock, its config checked as it runs, the run; returns the number a sweeper optimises."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    locked = False  # a multirun job takes its lock here; a single run's pre-flight holds it already
    try:
        locked = _main_rank() and lock_run_dir(out_dir)
        check_job(cfg, files=False)  # what runs, whatever chose its values (a plugin sweeper's are checked only here)
    except ZorunError as err:
        print(f"zorun: error: {err}", file=sys.stderr)
        if locked:
            unlock_run_dir(out_dir)
        sys.exit(EXIT_USAGE)
    try:
        summary = skip_if_completed(cfg) or record_if_incompatible(cfg)  # before importing the run stack
        if summary is None:
            summary = execute(cfg)
        return objective(summary, cfg.get("optimized_metric"))
    finally:
        if locked:
            unlock_run_dir(out_dir)


def execute(cfg: DictConfig) -> Dict[str, Any]:
    """One run as a job of the zorun command: always write summary.json, map failures to exit codes.

    Exit codes: 2 a usage or data error, 3 diverged, 128 + signal number when
    stopped by a signal (143 for SIGTERM, 130 for SIGINT) after its checkpoint,
    and 128 + the second signal's number when a second one stops it at once.
    """
    from zorun.run import Run  # the run stack (torch's model libraries: seconds): not for --help or a skipped job

    with StopSignals() as signals:
        run = Run(cfg, HydraConfig.get().runtime.output_dir, signals)
        exit_code = 0
        try:
            run.setup()
            run.train()
        except ZorunError as err:
            run.fail("failed", str(err))
            print(f"zorun: error: {err}", file=sys.stderr)
            exit_code = 2
        except KeyboardInterrupt:  # a second signal: stop at once, no checkpoint
            run.fail("stopped", f"interrupted at step {run.step}")
            exit_code = signals.interrupt_exit_code
        except Exception as err:  # a bug: keep the traceback, but never lose the summary
            run.fail("failed", f"{type(err).__name__}: {err}")
            run.cleanup()
            raise
        summary = run.cleanup()
        run.dp.close()
    if summary["status"] == "diverged":
        print(f"zorun: error: {summary['error']}", file=sys.stderr)
        exit_code = 3
    elif summary["status"] == "stopped" and signals.received is not None and not exit_code:
        saved = (f"checkpoint saved; continue with: zorun resume={run.out_dir}" if run.saved_step == run.step
                 else "no checkpoint (budget.checkpoint_on_stop=false)")
        print(f"zorun: {summary['error']}; {saved}", file=sys.stderr)
        exit_code = signals.exit_code
        signals.hand_over()  # e.g. submitit: requeue the job, which resumes from the checkpoint
    if exit_code:
        sys.exit(exit_code)
    return summary


def objective(summary: Dict[str, Any], key: Optional[str]) -> float:
    """summary.json's number at the dotted key (optimized_metric), by default the dev metric of the step
    budget.select chose; NaN where the run has none (an incompatible pair: Optuna records a failed trial)."""
    value: Any = summary
    for part in (key or f"selected.dev.{summary.get('metric')}").split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(usage())
        return
    run_app(_app, "config", argv, "zorun")


def _main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def run_app(app, config_name: str, argv: List[str], prog: str) -> None:
    """Pre-flight every job of the command line (one-line errors, exit 2), then hand over to the Hydra app.

    A refused single run leaves an existing run directory as it found it:
    checked before Hydra writes there, and put back (Snapshot) if the run
    itself refuses (exit 2)."""
    snapshot, claimed = None, None
    try:
        args = _hydra_argv_parser().parse_args(argv)
        if args.experimental_rerun is not None:
            raise ZorunError("--experimental-rerun unpickles a saved config, and unpickling can run code; "
                             "continue a run with resume=RUN_DIR")
        source = Source.of(args, app, config_name)
        if args.hydra_help or args.info or args.shell_completion:
            check_composable(args.overrides, source)
        else:
            overrides = args.overrides
            if config_name == "config":
                overrides = expand_resume(args.overrides, args.multirun)
                if overrides != args.overrides:  # resume=RUN_DIR: the run's own overrides first, then these
                    argv = [a for a in argv if a not in args.overrides] + overrides
            single = check_command(overrides, args.multirun, source, check_memory=not args.cfg).single
            run_dir = str(single.hydra.run.dir) if single is not None else ""
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun
                if config_name != "config":
                    raise ZorunError(f"{prog} runs in one process (its meta-gradient is not data-parallel); "
                                     "launch it without torchrun")
                argv = data_parallel_argv(argv, run_dir, single is None)
            elif single is not None:
                argv = pin_run_dir(argv, run_dir)
            if single is not None and args.cfg is None and _main_rank():
                snapshot = claim_run_dir(single, config_name)
                claimed = Path(run_dir)
    except (ZorunError, HydraException, OmegaConfBaseException) as ex:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"{prog}: error: {one_line(ex)}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    if args.cfg == "job" and not args.resolve:  # the values a run gets, not the recipes' ${zorun.by_peft:...}
        argv = [*argv, "--resolve"]
    sys.argv = [sys.argv[0]] + list(argv)
    try:
        app()
    except SystemExit as ex:
        if ex.code == EXIT_USAGE and snapshot is not None:
            snapshot.restore()
        raise
    finally:
        if claimed is not None:
            unlock_run_dir(claimed)


def claim_run_dir(cfg: DictConfig, config_name: str) -> Optional[Snapshot]:
    """Check a single run against what its directory holds, then lock the directory; its snapshot, if it held a run.

    The check comes first, so that a refused command leaves not even a lock file behind."""
    run_dir = Path(str(cfg.hydra.run.dir))
    existed = run_dir.is_dir() and any(run_dir.iterdir())
    if existed and config_name == "config":
        check_run_dir(cfg, run_dir)
    lock_run_dir(run_dir)
    return Snapshot(run_dir) if existed else None
