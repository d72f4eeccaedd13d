"""Weights & Biases for zorun runs: organised by sweep, never interactive, never fatal.

The local files (metrics.jsonl, summary.json, model/, the report) are the
record; W&B is a view on them: metrics against the step, the adapter and (with
logger.log_model) the model as artifacts, and for a multirun the report's
tables, plots (as images) and files. Every W&B call is guarded: if W&B cannot
start online (no network, bad key) the run logs offline instead, and if it
cannot log at all the run goes on without it. Either way the user gets one
warning, not a traceback. At start one line says where the run went: its URL,
or its offline directory and the `wandb sync` command that uploads it.
``wandb`` itself is imported where it is used: it takes seconds to load, and
only logger=wandb needs it.
"""

from __future__ import annotations

import logging
import math
import netrc
import os
from pathlib import Path
from typing import Any, Dict, List, Optional
from urllib.parse import urlparse

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from zorun.identity import config_hash, method_label, safe_dirname

log = logging.getLogger(__name__)


def has_credentials() -> bool:
    """An API key in the environment or in ~/.netrc (what `wandb login` writes), checked without prompting."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    """logger.mode=auto defers to WANDB_MODE, then to whether credentials exist; explicit modes win."""
    mode = str(getattr(mode, "value", mode))
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("online", "offline", "disabled"):
        return env
    if env == "dryrun":
        return "offline"
    return "online" if has_credentials() else "offline"


WANDB_MODES = ("online", "offline", "disabled", "dryrun", "shared", "run")  # what W&B's own settings accept


def clean_mode_env() -> None:
    """W&B re-reads WANDB_MODE in every wandb.init and rejects the whole init (a settings ValidationError), even an
    explicit offline one, when the variable holds anything else (empty, another case): normalise it or drop it."""
    env = os.environ.get("WANDB_MODE")
    if env is None or env in WANDB_MODES:
        return
    if env.strip().lower() in WANDB_MODES:
        os.environ["WANDB_MODE"] = env.strip().lower()
        return
    log.warning("WANDB_MODE=%r is not a W&B mode (%s); ignoring it", env, ", ".join(WANDB_MODES))
    del os.environ["WANDB_MODE"]


def _flatten(record: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """{'dev': {'accuracy': .8}} -> {'dev/accuracy': .8}; non-finite floats dropped (W&B charts reject them)."""
    out: Dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}/"))
        elif isinstance(value, float) and not math.isfinite(value):
            continue
        elif value is not None:
            out[name] = value
    return out


class WandbLogger:
    """One W&B run, or nothing (``self.run is None``): every method is safe to call either way."""

    def __init__(self, run: Any = None):
        self.run = run
        self._warned = False

    @classmethod
    def start(cls, logger_cfg: DictConfig, out_dir: Path, *, config: Dict[str, Any], group: Optional[str],
              job_type: str, tags: List[str], name: str) -> "WandbLogger":
        clean_mode_env()
        mode = resolve_mode(logger_cfg.mode)
        if mode == "disabled":
            return cls()
        directory = Path(logger_cfg.dir) if logger_cfg.dir else Path(out_dir)
        directory.mkdir(parents=True, exist_ok=True)
        kwargs = dict(project=logger_cfg.project, entity=logger_cfg.entity, group=group, job_type=job_type,
                      tags=tags, name=name, config=config, dir=str(directory))
        attempts, reason = [mode], None
        if mode == "online" and not has_credentials():
            attempts = ["offline"]
            reason = "logger.mode=online but no W&B API key is configured (WANDB_API_KEY or `wandb login`)"
        elif mode == "online":
            attempts.append("offline")
        for attempt in attempts:
            try:
                run = cls._init(kwargs, attempt, logger_cfg.init_timeout_s)
            except Exception as err:
                reason = f"W&B could not start {attempt} ({type(err).__name__}: {_first_line(err)})"
                _teardown()  # a failed init can leave W&B's service half set up, and the offline attempt fail on it
                continue
            if attempt != mode or reason:
                log.warning("%s; logging offline instead", reason)
            log.info(console_line(run))
            return cls(run)
        log.warning("%s; continuing without W&B, the local files are complete", reason)
        return cls()

    @staticmethod
    def _init(kwargs: Dict[str, Any], mode: str, timeout_s: float) -> Any:
        import wandb

        settings = wandb.Settings(mode=mode, init_timeout=timeout_s, login_timeout=timeout_s, silent=True,
                                  console="off")
        run = wandb.init(settings=settings, **kwargs)
        run.define_metric("step")
        run.define_metric("*", step_metric="step")  # every chart against the training step
        return run

    def _guard(self, what: str, fn) -> None:
        if self.run is None:
            return
        try:
            fn()
        except Exception as err:
            if not self._warned:
                log.warning("W&B %s failed (%s: %s); the run goes on, local files are complete",
                            what, type(err).__name__, _first_line(err))
                self._warned = True

    def log(self, record: Dict[str, Any]) -> None:
        """One metrics.jsonl record; its `step` is the x axis."""
        self._guard("log", lambda: self.run.log(_flatten(record)))

    def summary(self, summary: Dict[str, Any]) -> None:
        self._guard("summary", lambda: self.run.summary.update(_flatten(summary)))

    def log_folder(self, path: Path, kind: str) -> None:
        """A folder of the run (adapter/, model/) as the model artifact `<kind>-<run id>`.

        An adapter is copied into W&B's staging area (small); a model is referenced in place (gigabytes), so
        an offline run's model/ must stay until `wandb sync` has uploaded it.
        """
        def upload() -> None:
            import wandb

            artifact = wandb.Artifact(f"{kind}-{self.run.id}", type="model", metadata={"folder": Path(path).name})
            artifact.add_dir(str(path), policy="mutable" if kind == "adapter" else "immutable")
            self.run.log_artifact(artifact)

        self._guard(f"{kind} artifact", upload)

    def finish(self, exit_code: int) -> None:
        run, self.run = self.run, None
        if run is not None:
            try:
                run.finish(exit_code=exit_code)
            except Exception as err:
                log.warning("W&B finish failed (%s: %s)", type(err).__name__, _first_line(err))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def _teardown() -> None:
    try:
        import wandb

        wandb.teardown()
    except Exception as err:  # nothing to tear down, or W&B itself broken: the next attempt says which
        log.debug("wandb.teardown: %s", err)


def console_line(run: Any) -> str:
    """Mode, name and group of a W&B run, with its URL (online) or its directory and sync command (offline)."""
    group = f", group {run.group}" if run.group else ""
    if run.settings.mode == "offline":
        return (f"W&B offline: run {run.name}{group} in {run.settings.sync_dir}; "
                f"upload it with: wandb sync {run.settings.sync_dir}")
    return f"W&B online: run {run.name}{group}: {run.url}"


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


def job_group(cfg: DictConfig) -> Optional[str]:
    """logger.group, else the launch's group inside a multirun (:func:`sweep_group`), else None."""
    if cfg.logger.group:
        return str(cfg.logger.group)
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return sweep_group(HydraConfig.get(), cfg.logger.launched)


def start_run_logger(cfg: DictConfig, out_dir: Path) -> WandbLogger:
    """The W&B run of one zorun job (logger=wandb), or an inactive logger (logger=none)."""
    if cfg.logger.name != "wandb":
        return WandbLogger()
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    resolved["config_hash"] = config_hash(cfg)
    tags = [cfg.model.name, cfg.task.name, cfg.estimator.name, cfg.sampler.name, *cfg.logger.tags]
    name = f"{cfg.model.name}-{cfg.task.name}-{method_label(resolved)}-s{cfg.seed}"
    return WandbLogger.start(cfg.logger, out_dir, config=resolved, group=job_group(cfg),
                             job_type=method_label(resolved), tags=tags, name=name)


def log_report(config: DictConfig, report: Any) -> None:
    """At the end of a multirun, one run in the sweep's group (job_type=report): every job and the results as
    wandb.Tables, the report's plots as wandb.Images, and its files (tables, CSV, plots, report.html) as the
    artifact `report-<sweep>`."""
    sweep = sweep_name(config.hydra)
    group = str(config.logger.group) if config.logger.group else sweep_group(config.hydra, config.logger.launched)
    logger = WandbLogger.start(config.logger, report.out_dir, config={"sweep": sweep, "sweep_dir": str(report.root)},
                               group=group, job_type="report", tags=[sweep], name=f"{group}-report")
    if logger.run is None:
        return
    import wandb

    def tables() -> None:
        columns, rows = report.job_rows()
        logger.run.log({"grid": wandb.Table(columns=columns, data=rows)})
        columns, rows = report.table_rows()
        logger.run.log({"results": wandb.Table(columns=columns, data=rows)})

    def files() -> None:
        artifact = wandb.Artifact(f"report-{safe_dirname(group)}", type="report", metadata={"sweep_dir": str(report.root)})
        for path in sorted(report.out_dir.iterdir()):
            if path.is_file():
                artifact.add_file(str(path))
        logger.run.log_artifact(artifact)

    logger._guard("table", tables)
    logger._guard("images", lambda: logger.run.log({f"plots/{p.stem}": wandb.Image(str(p)) for p in report.plots}))
    logger._guard("report artifact", files)
    logger.finish(0)
