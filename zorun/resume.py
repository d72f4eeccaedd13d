"""Run directories: `zorun resume=RUN_DIR`, one writer at a time, and nothing written by a refused attempt.

Hydra saved the command's overrides in RUN_DIR/.hydra/overrides.yaml, so
composing them again (the new overrides after them, so they win) rebuilds
the run's config; hydra.run.dir=RUN_DIR sends the job back into the directory,
where :meth:`zorun.run.Run.setup` finds the newest checkpoint and continues.
Relaunching the same command into the same directory does the same.

Before Hydra writes anything into an existing directory, the pre-flight takes
the directory's lock (:func:`lock_run_dir`) and checks what the run would
refuse there (:func:`check_run_dir`); a refusal that only the run can find
(a model or data file that changed) puts back what the attempt wrote
(:class:`Snapshot`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import struct
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from zorun.errors import ConfigError, ZorunError
from zorun.identity import config_hash, identity, override_root

_DROP = ("resume=", "hydra.run.dir=")
LOCK = ".zorun.lock"


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
    try:
        previous = OmegaConf.load(saved)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, OmegaConfBaseException) as err:
        raise ConfigError(f"resume={run_dir}: {saved} is not readable YAML ({type(err).__name__}); restore it, "
                          f"or start a new run directory") from err
    if not isinstance(previous, ListConfig) or not all(isinstance(o, str) for o in previous):
        raise ConfigError(f"resume={run_dir}: {saved} is not a list of overrides; restore it, or start a new run "
                          f"directory")
    for line in previous:  # Hydra keeps hydra.* overrides in hydra.yaml: such a line was added by hand
        if override_root(line) == "hydra":
            raise ConfigError(f"resume={run_dir}: {saved} holds '{line}', which Hydra never writes there; remove "
                              f"that line (a resume replays the file)")
    previous = [o for o in previous if not o.startswith(_DROP)]
    mine = [o for o in overrides if not o.startswith(_DROP)]
    return previous + mine + [f"resume={run_dir}", f"hydra.run.dir={run_dir}"]


# ------------------------------------------------------------------ config
def comparable_config(cfg: DictConfig) -> Dict[str, Any]:
    """What a resume must not change: the config except logging and the budget (batch_size stays)."""
    ident = identity(cfg, drop=("resume",))
    ident["budget"] = {"batch_size": ident["budget"]["batch_size"]}
    return ident


def first_difference(a: Any, b: Any, key: str = "") -> Optional[Tuple[str, Any, Any]]:
    """(dotted key, a's value, b's value) of the first difference between two config trees, else None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            found = first_difference(a.get(k), b.get(k), f"{key}.{k}" if key else k)
            if found:
                return found
        return None
    return None if a == b else (key, a, b)


def config_change(checkpoint: Path, saved: Dict[str, Any], cfg: DictConfig) -> Optional[ZorunError]:
    """The refusal of a resume whose config differs from its checkpoint's where a resume may not change it."""
    from zorun.checkpoint import CheckpointError

    diff = first_difference(saved, comparable_config(cfg))
    if diff is None:
        return None
    key, there, here = diff
    return CheckpointError(f"checkpoint {checkpoint} was written with {key}={there}, this run has {key}={here}; "
                           f"a resume may change budget.* (not batch_size) and logger.* only, so start a new run "
                           f"directory for this change")


def check_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    """What the run would refuse in an existing directory, refused before anything is written there.

    The newest checkpoint is opened (sizes and sha256 of every file) and its
    config compared; a completed run without a checkpoint is not overwritten
    by another config."""
    from zorun.checkpoint import Checkpoints

    latest = Checkpoints(run_dir / "checkpoints", keep=1).latest()
    if latest is None:
        if cfg.resume:
            raise ZorunError(f"resume={cfg.resume}: {run_dir / 'checkpoints'} holds no checkpoint "
                             f"(budget.checkpoint_every=0 and never stopped by a signal?); start the run afresh "
                             f"without resume=")
        summary = _read_json(run_dir / "summary.json")
        if summary.get("status") == "completed" and summary.get("config_hash") != config_hash(cfg):
            raise ZorunError(f"{run_dir} holds a completed run with another config and no checkpoint to continue "
                             f"from; choose another hydra.run.dir")
        return
    refusal = config_change(latest.path, latest.meta["config"], cfg)
    if refusal is not None:
        raise refusal


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


# -------------------------------------------------------------------- lock
_HELD: Dict[Path, int] = {}  # run directory -> descriptor of its lock file, while this process holds it


def lock_run_dir(run_dir: Path) -> bool:
    """Hold RUN_DIR/.zorun.lock exclusively until :func:`unlock_run_dir`; False if this process holds it already.

    A POSIX record lock (fcntl): the kernel drops it when its holder dies, so
    a killed run never blocks the next (its lock file stays, unlocked), and a
    second writer learns the holder's PID from the lock itself (F_GETLK). The
    file exists while a run holds it: unlocking removes it first, and a lock
    taken on a file that was meanwhile removed is taken again on the new one."""
    key = Path(run_dir).resolve()
    if key in _HELD:
        return False
    key.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(key / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _holder(fd) if err.errno in (errno.EACCES, errno.EAGAIN) else None
            os.close(fd)
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                raise ZorunError(f"cannot lock {key / LOCK} ({err.strerror}); choose another hydra.run.dir") from err
            who = f"zorun process {holder}" if holder else "another zorun process"
            raise ZorunError(f"run directory {run_dir} is in use by {who}; wait for it to end, or stop it"
                             f"{f' (kill {holder})' if holder else ''}, then run the command again") from None
        try:
            same = os.stat(key / LOCK).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            _HELD[key] = fd
            return True
        os.close(fd)  # its holder removed the file between our open and our lock: lock the new one


def unlock_run_dir(run_dir: Path) -> None:
    """Remove the lock file, then release the lock (the order keeps a waiting writer off the removed file)."""
    key = Path(run_dir).resolve()
    fd = _HELD.pop(key, None)
    if fd is not None:
        try:
            os.unlink(key / LOCK)
        except FileNotFoundError:
            pass
        os.close(fd)


def _holder(fd: int) -> Optional[int]:
    """The PID holding a conflicting lock on fd's file (Linux's struct flock; None elsewhere or if unknown)."""
    if not sys.platform.startswith("linux"):
        return None
    layout = "hhqqi4x"  # l_type, l_whence, l_start, l_len, l_pid
    query = struct.pack(layout, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    try:
        l_type, _, _, _, pid = struct.unpack(layout, fcntl.fcntl(fd, fcntl.F_GETLK, query))
    except OSError:
        return None
    return pid if l_type != fcntl.F_UNLCK and pid > 0 else None


# ---------------------------------------------------------------- snapshot
_SMALL = 1 << 20  # bytes; larger files (weights the run exports when it completes) are not kept


class Snapshot:
    """An existing run directory's files before an attempt, to put back if the attempt is refused.

    Hydra writes .hydra/ and its log before the run can check a model or a
    data file; a refused attempt also writes summary.json. The small files
    (.hydra/*, summary.json) are kept whole, the logs (*.log, *.jsonl) as
    sizes, since an attempt only appends to them before it is past its checks;
    files the attempt added there are removed."""

    def __init__(self, run_dir: Path):
        self.folders = [run_dir, run_dir / ".hydra"]
        self.absent = [folder for folder in self.folders if not folder.is_dir()]
        self.contents: Dict[Path, bytes] = {}
        self.sizes: Dict[Path, int] = {}
        self.existing = set(self._files())
        for path in self.existing:
            if path.suffix in (".log", ".jsonl"):
                self.sizes[path] = path.stat().st_size
            elif path.stat().st_size <= _SMALL:
                self.contents[path] = path.read_bytes()

    def _files(self) -> List[Path]:
        return [p for folder in self.folders if folder.is_dir() for p in folder.iterdir()
                if p.is_file() and p.name != LOCK]

    def restore(self) -> None:
        for path in set(self._files()) - self.existing:
            path.unlink()
        for folder in self.absent:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        for path, data in self.contents.items():
            if not path.is_file() or path.read_bytes() != data:
                tmp = path.with_name(f".{path.name}.restore")
                tmp.write_bytes(data)
                os.replace(tmp, path)
        for path, size in self.sizes.items():
            if path.is_file() and path.stat().st_size > size:
                os.truncate(path, size)
