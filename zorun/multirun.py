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

import hashlib
import json
import logging
import re
import secrets
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from hydra.core.config_store import ConfigStore
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

import zorun.config  # noqa: F401  registers the zorun.* resolvers that the model presets (and saved run configs) use

log = logging.getLogger(__name__)

# Keys that change how a run is logged, not what it computes: not part of its identity.
NOT_IDENTITY = ("hydra", "logger", "force", "skip_incompatible", "resume", "optimized_metric")
MAX_DIRNAME = 200  # bytes; most file systems allow 255
SWEEP_RECORD = "sweep.json"  # in each job directory of a multirun: the launch command it belongs to


def sweeps_dir() -> Path:
    """sweeps/ inside the installed package (wheel), else the repository's top-level sweeps/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "sweeps", here.parent / "sweeps"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("zorun's sweeps directory is missing from the installation")


def register_sweeps() -> None:
    """Each sweeps/NAME.yaml becomes option NAME of the group `sweep`, merged at the root."""
    cs = ConfigStore.instance()
    for path in sorted(sweeps_dir().glob("*.yaml")):
        cs.store(group="sweep", name=path.stem, node=OmegaConf.load(path), package="_global_")


def safe_dirname(text: str) -> str:
    """Hydra's override_dirname with '/' and other unsafe characters replaced, and bounded length."""
    name = re.sub(r"[^A-Za-z0-9._=,+@\-\[\]]", "_", text) or "default"
    if len(name.encode()) > MAX_DIRNAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = name[: MAX_DIRNAME - 12] + "~" + digest
    return name


if not OmegaConf.has_resolver("zorun.dirname"):
    OmegaConf.register_new_resolver("zorun.dirname", safe_dirname)
if not OmegaConf.has_resolver("zorun.launch_id"):
    # Cached, and Hydra copies the sweep config's cache into every job: one value per launch.
    OmegaConf.register_new_resolver("zorun.launch_id", lambda: secrets.token_hex(3), use_cache=True)


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
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return HydraConfig.get()


def incompatibility(cfg: DictConfig) -> Optional[str]:
    """Why this job's sampler/estimator combination is refused, or None when it can run."""
    from zorun.config import ConfigError
    from zorun.registry import check_combination

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
    from zorun.tracking import write_json_atomic

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
            import shutil

            shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
            for path in out_dir.glob("*.jsonl"):
                path.unlink()
        return None
    if found.parent.resolve() != out_dir.resolve():
        from zorun.tracking import write_json_atomic

        out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out_dir / "skipped.json", {"reason": "completed with the same config", "summary": str(found)})
    log.info("skipped: completed with the same config in %s (force=true re-runs it)", found.parent)
    return json.loads(found.read_text())


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


def sweep_name(hydra_cfg: Any) -> str:
    """The sweep file's name for `+sweep=NAME` launches, else the sweep directory's name."""
    choice = hydra_cfg.runtime.choices.get("sweep")
    return choice or Path(str(hydra_cfg.sweep.dir)).name


def sweep_group(hydra_cfg: Any, launched: str) -> str:
    """The W&B group of one launch: '<sweep name>-<launch time>' for +sweep=NAME, else the ad-hoc sweep
    directory's date and time with its unique suffix ('2026-12-01_06-26-36-3f9a1c')."""
    choice = hydra_cfg.runtime.choices.get("sweep")
    if choice:
        return f"{choice}-{launched}"
    path = Path(str(hydra_cfg.sweep.dir))
    return f"{path.parent.name}_{path.name}"


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
        from zorun.tracking import write_json_atomic

        out_dir = Path(str(config.hydra.runtime.output_dir))
        write_json_atomic(out_dir / SWEEP_RECORD, {"grid": self.grid})

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from zorun.report import build_reports
        from zorun.tracking.wandb_logger import log_report

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
