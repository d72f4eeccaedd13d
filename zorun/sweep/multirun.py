"""What a multirun needs beyond Hydra's basic sweeper.

- The grids in ``sweeps/`` become the config group ``sweep`` (``zorun -m +sweep=NAME``).
  They live outside ``conf/`` because they are launch recipes, not run options;
  registering them in the ConfigStore keeps the group name singular whatever
  the folder is called, in the repository and in the wheel alike.
- ``zorun.dirname`` turns Hydra's ``override_dirname`` into a path-safe job
  directory name; ``zorun.launch_id`` gives each ad-hoc sweep directory a
  unique suffix, so two multiruns started in the same second never share one.
- Each job records its launch command (``sweep.json``), so the report tells
  apart sweeps that share a directory.
- Resume: a job whose resolved config (hash) already completed in the sweep
  directory is skipped, whatever directory it ran in; ``force=true`` re-runs it.
- :class:`MultirunCallback` writes the report (and the W&B grid table) when the
  multirun ends.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import zorun.config  # noqa: F401  registers the zorun.* resolvers that the model presets (and saved run configs) use
from zorun.errors import ConfigError
from zorun.identity import NOT_IDENTITY, SWEEP_RECORD, config_hash, override_root, safe_dirname
from zorun.paths import PACKAGE
from zorun.tracking import write_json_atomic
from zorun.tracking.wandb_logger import log_report

log = logging.getLogger(__name__)


def sweeps_dir() -> Path:
    """sweeps/ inside the installed package (wheel), else the repository's top-level sweeps/."""
    for candidate in (PACKAGE / "sweeps", PACKAGE.parent / "sweeps"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("zorun's sweeps directory is missing from the installation")


def register_sweeps() -> None:
    """Each sweeps/NAME.yaml becomes option NAME of the group `sweep`, merged at the root."""
    cs = ConfigStore.instance()
    for path in sorted(sweeps_dir().glob("*.yaml")):
        cs.store(group="sweep", name=path.stem, node=OmegaConf.load(path), package="_global_")


if not OmegaConf.has_resolver("zorun.dirname"):
    OmegaConf.register_new_resolver("zorun.dirname", safe_dirname)
if not OmegaConf.has_resolver("zorun.launch_id"):
    # Cached, and Hydra copies the sweep config's cache into every job: one value per launch.
    OmegaConf.register_new_resolver("zorun.launch_id", lambda: secrets.token_hex(3), use_cache=True)


def find_completed(sweep_dir: Path, digest: str) -> Optional[Path]:
    """The summary.json under sweep_dir of a completed job with this config hash, if any."""
    for path in sorted(Path(sweep_dir).rglob("summary.json")):
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if summary.get("status") == "completed" and summary.get("config_hash") == digest:
            return path
    return None


def _multirun_job() -> Any:
    """Hydra's config of the running job when it is part of a multirun, else None."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return HydraConfig.get()


def incompatibility(cfg: DictConfig) -> Optional[str]:
    """Why this job's sampler/estimator combination is refused, or None when it can run."""
    from zorun.registry import check_combination  # every method's module, so torch: only when a job asks

    try:
        check_combination(cfg)
    except ConfigError as err:
        return str(err)
    return None


def record_if_incompatible(cfg: DictConfig) -> Optional[Dict[str, Any]]:
    """With skip_incompatible=true in a multirun: a refused combination becomes a summary, not a failure.

    The grid's cartesian product may pair methods that cannot run together
    (sampler=ldsd with estimator=hizoo); such a job writes summary.json with
    status "incompatible" and the reason, and the report shows its cell as n/a.
    """
    hydra_cfg = _multirun_job()
    if hydra_cfg is None or not cfg.skip_incompatible:
        return None
    reason = incompatibility(cfg)
    if reason is None:
        return None
    summary = {"status": "incompatible", "error": reason, "model": cfg.model.name, "task": cfg.task.name,
               "estimator": cfg.estimator.name, "sampler": cfg.sampler.name, "seed": int(cfg.seed),
               "config_hash": config_hash(cfg)}
    out_dir = Path(hydra_cfg.runtime.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "summary.json", summary)
    log.info("not run: %s", reason)
    return summary


def skip_if_completed(cfg: DictConfig) -> Optional[Dict[str, Any]]:
    """In a multirun, the summary of a completed job with the same config hash (the job is then skipped).

    force=true re-runs it. A job that runs again in a directory holding an
    earlier attempt (stopped, preempted, failed) resumes from that attempt's
    newest checkpoint, its logs cut back to that step, or starts afresh
    without one (see :meth:`zorun.run.Run.setup`); force=true discards the
    attempt's checkpoints and logs, so the job starts over.
    """
    hydra_cfg = _multirun_job()
    if hydra_cfg is None:
        return None
    out_dir = Path(hydra_cfg.runtime.output_dir)
    found = None if cfg.force else find_completed(Path(str(hydra_cfg.sweep.dir)), config_hash(cfg))
    if found is None:
        if cfg.force:  # start over: the attempt's checkpoints and per-step logs go
            shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
            for path in out_dir.glob("*.jsonl"):
                path.unlink()
        return None
    if found.parent.resolve() != out_dir.resolve():
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out_dir / "skipped.json", {"reason": "completed with the same config", "summary": str(found)})
    log.info("skipped: completed with the same config in %s (force=true re-runs it)", found.parent)
    return json.loads(found.read_text())


def launch_grid(config: DictConfig) -> List[str]:
    """The overrides of a multirun command that decide its jobs, sorted: what makes two launches one sweep
    (a relaunch that resumes it), or two (other grids in the same directory)."""
    return sorted(str(o) for o in config.hydra.overrides.task if override_root(str(o)) not in NOT_IDENTITY)


class MultirunCallback(Callback):
    """Hydra callback (conf/config.yaml): shared launch time, each job's launch record, the report at the end."""

    grid: Optional[List[str]] = None  # the launch command's overrides; None outside a multirun

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Resolving ${now:...} here puts it in the sweep config's resolver cache,
        # which Hydra copies into every job: one W&B group per launch.
        OmegaConf.select(config, "logger.launched", default=None)
        self.grid = launch_grid(config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.grid is None:
            return
        out_dir = Path(str(config.hydra.runtime.output_dir))
        write_json_atomic(out_dir / SWEEP_RECORD, {"grid": self.grid})

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from zorun.sweep.report import build_reports  # plotly, matplotlib: loaded when a multirun ends

        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            report = next(r for r in build_reports(sweep_dir) if r.sweep in (None, " ".join(self.grid or [])))
            report.write()
            report.print()
        except Exception as err:  # the jobs' results are on disk; a report bug must not hide them
            log.warning("zorun-report failed on %s: %s: %s (run `zorun-report %s` to retry)",
                        sweep_dir, type(err).__name__, err, sweep_dir)
            return
        if config.logger.name == "wandb":
            log_report(config, report)
