"""metrics.jsonl (one object per logged step, flushed) and atomically written JSON files."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict


def _jsonable(value: Any) -> Any:
    """NaN/inf become null so every line stays valid JSON for other tools."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_json_atomic(path: Path, data: Dict[str, Any]) -> None:
    """Temporary file, fsync, rename: a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(_jsonable(data), fh, indent=2, sort_keys=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class MetricsWriter:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._fh = self.path.open("a", encoding="utf-8")

    def write(self, record: Dict[str, Any]) -> None:
        self._fh.write(json.dumps(_jsonable(record)) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def check_writable(directory: Path) -> None:
    """Create and remove a file in `directory` (or its nearest existing parent, which Hydra will create it in).

    A real write, not os.access: root passes access checks on read-only
    mounts and permission bits alike, and a run must fail at start-up, not
    at its first checkpoint hours later.
    """
    from zorun.errors import ZorunError

    directory = Path(directory)
    target = directory
    while not target.exists() and target != target.parent:
        target = target.parent
    if not target.is_dir():
        raise ZorunError(f"output directory {directory} cannot be created: {target} is a file; "
                         f"choose another with hydra.run.dir=PATH")
    try:
        fd, name = tempfile.mkstemp(dir=target, prefix=".zorun-write-test-")
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise ZorunError(f"output directory {directory} is not writable ({err.strerror or type(err).__name__}: "
                         f"{target}); choose another with hydra.run.dir=PATH") from err
