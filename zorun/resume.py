"""`zorun resume=RUN_DIR [overrides]`: relaunch a run into its own directory with its own overrides.

Hydra saved the command's overrides in RUN_DIR/.hydra/overrides.yaml, so
composing them again (the new overrides after them, so they win) rebuilds
the run's config; hydra.run.dir=RUN_DIR sends the job back into the directory,
where :meth:`zorun.run.Run.setup` finds the newest checkpoint and continues.
Relaunching the same command into the same directory does the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

from omegaconf import OmegaConf

from zorun.errors import ConfigError

_DROP = ("resume=", "hydra.run.dir=")


def resume_dir(overrides: List[str]) -> str | None:
    values = [o.split("=", 1)[1] for o in overrides if o.startswith("resume=")]
    return values[-1] if values and values[-1] not in ("", "null") else None


def expand_resume(overrides: List[str], multirun: bool) -> List[str]:
    """The overrides that relaunch RUN_DIR, or `overrides` unchanged without resume=."""
    run_dir = resume_dir(overrides)
    if run_dir is None:
        return overrides
    if multirun:
        raise ConfigError("resume= continues one run; a multirun resumes when relaunched with the same command "
                          "and hydra.sweep.dir (finished jobs are skipped, stopped ones continue)")
    saved = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise ConfigError(f"resume={run_dir}: {saved} not found; point resume= at the directory of a zorun run")
    previous = [str(o) for o in OmegaConf.load(saved) if not str(o).startswith(_DROP)]
    mine = [o for o in overrides if not o.startswith(_DROP)]
    return previous + mine + [f"resume={run_dir}", f"hydra.run.dir={run_dir}"]
