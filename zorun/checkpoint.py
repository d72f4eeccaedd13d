"""Checkpoints: everything a run needs to continue bit for bit, written so that no kill can corrupt one.

Layout: ``<run dir>/checkpoints/step-<N>/`` holding

    params.safetensors   the trainable tensors, by parameter name
    state.safetensors    every other tensor: estimator and sampler state, RNG states (uint8)
    state.json           format version, step, model identity, config, run counters, the non-tensor
                         parts of the estimator/sampler/RNG states (tensors referenced by key),
                         the byte sizes of the run's logs and of the two tensor files
    SHA256SUMS           the sha256 of the three files above (``sha256sum -c SHA256SUMS`` reads it)

A checkpoint is written into a hidden temporary directory, every file is
fsynced, then the directory is renamed into place (atomic on POSIX), so a
reader only ever sees complete checkpoints; the newest k are kept. A write
that fails (a full disk) leaves no temporary directory behind. Nothing is
unpickled on load: tensors come from safetensors, the rest from JSON; every
file's size and sha256 are verified before use, and a truncated or corrupted
file ends in one :class:`CheckpointError` line that offers the previous checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from zorun.errors import ZorunError
from zorun.params import ParamSpace

log = logging.getLogger(__name__)

FORMAT = 2  # 2: SHA256SUMS; format 1 (sizes only) still loads
READS = (1, 2)
PARAMS, STATE, META, SUMS = "params.safetensors", "state.safetensors", "state.json", "SHA256SUMS"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_TENSOR = "__tensor__"
_INT_KEYS = "__int_keys__"


class CheckpointError(ZorunError):
    """A checkpoint that cannot be used: truncated, corrupted, from another model or config."""


class NonFiniteError(ZorunError):
    """Refusal to save a non-finite value."""


# ------------------------------------------------------------ state trees
def split_tensors(tree: Any, prefix: str, tensors: Dict[str, torch.Tensor]) -> Any:
    """A JSON-able copy of a state_dict tree; each tensor goes to `tensors` and leaves a reference."""
    if isinstance(tree, torch.Tensor):
        tensors[prefix] = tree.detach()
        return {_TENSOR: prefix}
    if isinstance(tree, dict):
        if all(isinstance(k, str) for k in tree) and _INT_KEYS not in tree:
            return {k: split_tensors(v, f"{prefix}/{k}", tensors) for k, v in tree.items()}
        if all(isinstance(k, int) and not isinstance(k, bool) for k in tree):  # torch.optim's per-parameter state
            return {_INT_KEYS: {str(k): split_tensors(v, f"{prefix}/{k}", tensors) for k, v in tree.items()}}
        raise TypeError(f"state at '{prefix}' mixes key types; state_dict() may use str or int keys")
    if isinstance(tree, (list, tuple)):
        return [split_tensors(v, f"{prefix}/{i}", tensors) for i, v in enumerate(tree)]
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise TypeError(f"state at '{prefix}' is a {type(tree).__name__}; state_dict() may hold tensors, "
                    f"dicts (str or int keys), lists, numbers, strings and None only")


def join_tensors(tree: Any, tensors: Dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict):
        if set(tree) == {_TENSOR}:
            return tensors[tree[_TENSOR]]
        if set(tree) == {_INT_KEYS}:
            return {int(k): join_tensors(v, tensors) for k, v in tree[_INT_KEYS].items()}
        return {k: join_tensors(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [join_tensors(v, tensors) for v in tree]
    return tree


def _owned(t: torch.Tensor) -> torch.Tensor:
    """safetensors refuses views sharing storage: copy a tensor only when it does not own all of it."""
    t = t.detach()
    if not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.contiguous().clone()
    return t


# ---------------------------------------------------------------- RNGs
def rng_state() -> Dict[str, Any]:
    """Every global generator: torch CPU (and CUDA when in use), Python's `random`, NumPy's legacy one."""
    version, internal, gauss = random.getstate()
    key, pos, has_gauss, cached = np.random.get_state()[1:]
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_initialized() else [],
        "python": [version, list(internal), gauss],
        "numpy": {"key": key.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", np.array(n["key"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))


# ------------------------------------------------------- model identity
def model_identity(space: ParamSpace) -> List[List[Any]]:
    """Name, shape and dtype of every trainable block: what a checkpoint's parameters must fit."""
    return [[b.name, list(b.tensor.shape), str(b.tensor.dtype).removeprefix("torch.")] for b in space.blocks]


def all_finite(space: ParamSpace) -> Optional[str]:
    """None when every trainable value is finite, else the name of the first block that is not."""
    for b in space.blocks:
        if b.tensor.is_floating_point() and not bool(torch.isfinite(b.tensor).all()):
            return b.name
    return None


# ------------------------------------------------------------- writing
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_CHUNK = 8 << 20
# sha256 of files this process wrote or verified, by (device, inode, size, mtime), which a rename keeps: a resume
# verifies the checkpoint in the pre-flight, and a non-finite step reloads the one it just wrote; neither reads twice.
_DIGESTS: Dict[Tuple[int, int, int, int], str] = {}


def _stat_key(path: Path) -> Tuple[int, int, int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def sha256(path: Path) -> str:
    """The file's sha256 (hex), read in 8 MiB chunks."""
    key = _stat_key(path)
    if key not in _DIGESTS:
        digest, buf = hashlib.sha256(), bytearray(_CHUNK)
        view = memoryview(buf)
        with path.open("rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                digest.update(view[:n])
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def _read_sums(path: Path) -> Dict[str, str]:
    """SHA256SUMS as sha256sum writes it: '<hex>  <name>' per line."""
    sums = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name:
            raise ValueError(f"malformed line {line[:40]!r}")
        sums[name] = digest
    return sums


class Checkpoints:
    """The checkpoints of one run directory: save (atomic, keep the newest k), list, open the newest."""

    def __init__(self, root: Path, keep: int):
        self.root = Path(root)
        self.keep = keep

    def steps(self) -> List[Tuple[int, Path]]:
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
        return sorted(found)

    def latest(self) -> Optional["Checkpoint"]:
        found = self.steps()
        return Checkpoint.open(found[-1][1]) if found else None

    def discard_partial(self) -> None:
        """Temporary directories of saves that a kill interrupted: never complete, never read."""
        if self.root.is_dir():
            for p in self.root.glob(".tmp-*"):
                shutil.rmtree(p, ignore_errors=True)

    @staticmethod
    def _write(tmp: Path, step: int, space: ParamSpace, meta: Dict[str, Any], tree: Any,
               tensors: Dict[str, torch.Tensor]) -> None:
        """The checkpoint's files in tmp, each hashed and fsynced; SHA256SUMS last."""
        save_file({b.name: _owned(b.tensor) for b in space.blocks}, str(tmp / PARAMS), metadata={"format": str(FORMAT)})
        save_file({k: _owned(t) for k, t in tensors.items()}, str(tmp / STATE), metadata={"format": str(FORMAT)})
        files = {name: (tmp / name).stat().st_size for name in (PARAMS, STATE)}
        body = {"format": FORMAT, "step": step, "model": model_identity(space), **meta, "state": tree, "files": files}
        (tmp / META).write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
        for name in (PARAMS, STATE, META):
            _fsync(tmp / name)
        sums = "".join(f"{sha256(tmp / name)}  {name}\n" for name in (PARAMS, STATE, META))
        (tmp / SUMS).write_text(sums, encoding="utf-8")
        _fsync(tmp / SUMS)
        _fsync(tmp)

    def save(self, step: int, space: ParamSpace, meta: Dict[str, Any], state: Dict[str, Any]) -> Path:
        """Write step-N atomically; raises NonFiniteError (writing nothing) if any value is not finite."""
        tensors: Dict[str, torch.Tensor] = {}
        tree = split_tensors(state, "", tensors)
        _check_finite(step, space, tensors)
        final = self.root / f"step-{step:08d}"
        tmp = self.root / f".tmp-step-{step:08d}-{os.getpid()}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            self._write(tmp, step, space, meta, tree, tensors)
        except (OSError, SafetensorError) as err:  # a full disk, a quota, a file size limit (safetensors' own error)
            shutil.rmtree(tmp, ignore_errors=True)  # the step-N directories stay as they were
            found = self.steps()
            kept = f"the previous checkpoint {found[-1][1].name} is intact" if found else "no earlier checkpoint exists"
            why = getattr(err, "strerror", None) or _first_line(err)
            raise CheckpointError(f"cannot write checkpoint step {step} in {self.root} ({why}); {kept}; free space, "
                                  f"then zorun resume={self.root.parent}") from err
        if final.exists():  # a second save at the same step (e.g. a signal right after a periodic save)
            old = self.root / f".tmp-old-{final.name}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync(self.root)
        for _, path in self.steps()[: -self.keep]:
            shutil.rmtree(path, ignore_errors=True)
        return final


def _check_finite(step: int, space: ParamSpace, tensors: Dict[str, torch.Tensor]) -> None:
    bad = all_finite(space)
    if bad is None:
        bad = next((k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
    if bad is not None:
        raise NonFiniteError(f"not saving a checkpoint at step {step}: '{bad}' holds non-finite values")


def check_savable(step: int, space: ParamSpace, state: Dict[str, Any]) -> None:
    """What :meth:`Checkpoints.save` checks, without writing (data-parallel ranks other than 0)."""
    tensors: Dict[str, torch.Tensor] = {}
    split_tensors(state, "", tensors)
    _check_finite(step, space, tensors)


# ------------------------------------------------------------- reading
class Checkpoint:
    """One complete checkpoint directory; every problem with it is a one-line CheckpointError."""

    def __init__(self, path: Path, meta: Dict[str, Any]):
        self.path = path
        self.meta = meta
        self.step = int(meta["step"])

    def _broken(self, what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {self.path} is unusable: {what}; {_previous(self.path)}")

    @classmethod
    def open(cls, path: Path) -> "Checkpoint":
        path = Path(path)
        self = cls(path, {"step": -1})
        try:
            meta = json.loads((path / META).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise self._broken(f"{META} cannot be read ({type(err).__name__})") from err
        if not isinstance(meta, dict) or meta.get("format") not in READS:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise self._broken(f"format {found!r}, this zorun reads formats {', '.join(map(str, READS))}")
        missing = sorted({"step", "model", "state", "files"} - meta.keys())
        if missing:
            raise self._broken(f"{META} lacks {', '.join(missing)}")
        files = meta["files"]
        if not isinstance(files, dict) or not isinstance(meta["step"], int):
            raise self._broken(f"{META} is not a zorun checkpoint's (files, step)")
        for name, size in files.items():
            actual = (path / name).stat().st_size if (path / name).is_file() else None
            if actual != size:
                raise self._broken(f"{name} is {actual} bytes, {size} were written (truncated or corrupted)")
        if meta["format"] >= 2 or (path / SUMS).exists():
            self._verify()
        else:
            log.warning("checkpoint %s predates checksums (format 1): sizes checked, contents not", path)
        return cls(path, meta)

    def _verify(self) -> None:
        """Every file's sha256 against SHA256SUMS, which must list the three files."""
        try:
            sums = _read_sums(self.path / SUMS)
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise self._broken(f"{SUMS} cannot be read ({_first_line(err)})") from err
        for name in sorted({PARAMS, STATE, META} | set(sums)):
            if name not in sums:
                raise self._broken(f"{SUMS} lacks {name}")
            file = self.path / name
            if "/" in name or not file.is_file():
                raise self._broken(f"{SUMS} lists {name}, which is not in the checkpoint")
            if sha256(file) != sums[name]:
                raise self._broken(f"{name} does not match its sha256 in {SUMS} (changed on disk after it was written)")

    def check_model(self, space: ParamSpace) -> None:
        mine, theirs = model_identity(space), self.meta["model"]
        for i in range(max(len(mine), len(theirs))):
            a = mine[i] if i < len(mine) else None
            b = theirs[i] if i < len(theirs) else None
            if a != b:
                def show(x):
                    return "nothing" if x is None else f"{x[0]} {x[1]} {x[2]}"
                raise CheckpointError(f"checkpoint {self.path} was written for another model (block {i}: "
                                      f"{show(b)} there, {show(a)} here); resume with the model it was written "
                                      f"for, or start a new run directory")

    def load_params(self, space: ParamSpace) -> None:
        """Copy the saved trainable tensors into the model, one at a time (no second copy of the model)."""
        self.check_model(space)
        try:
            with safe_open(str(self.path / PARAMS), framework="pt") as f:
                for b in space.blocks:
                    with torch.no_grad():
                        b.tensor.copy_(f.get_tensor(b.name))
        except (SafetensorError, OSError, KeyError, RuntimeError) as err:
            raise self._broken(f"{PARAMS}: {_first_line(err)}") from err
        bad = all_finite(space)
        if bad is not None:
            raise self._broken(f"'{bad}' holds non-finite values")

    def load_state(self) -> Dict[str, Any]:
        try:
            tensors = load_file(str(self.path / STATE))
        except (SafetensorError, OSError, RuntimeError) as err:
            raise self._broken(f"{STATE}: {_first_line(err)}") from err
        try:
            return join_tensors(self.meta["state"], tensors)
        except KeyError as err:
            raise self._broken(f"{STATE} lacks tensor {err}") from err


def _previous(path: Path) -> str:
    """The fix for an unusable checkpoint: the one before it, if the run kept one."""
    mine = _STEP_DIR.match(path.name)
    older = [p for step, p in Checkpoints(path.parent, 1).steps() if mine and step < int(mine.group(1))]
    if not older:
        return "no older checkpoint is kept: start a new run directory"
    return f"move it out of {path.parent} to resume from {older[-1].name}, the previous checkpoint"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ----------------------------------------------------------------- logs
def log_sizes(paths: List[Path]) -> Dict[str, int]:
    """Byte size of each per-step log, fsynced: where a resume cuts them back to."""
    sizes = {}
    for path in paths:
        if path.exists():
            _fsync(path)
            sizes[path.name] = path.stat().st_size
    return sizes


def truncate_logs(paths: List[Path], sizes: Dict[str, int]) -> None:
    """Cut each per-step log back to its size at the checkpoint (0 for a fresh start), dropping what a
    stopped or killed attempt wrote after it, so the resumed run appends exactly what an uninterrupted one would."""
    for path in paths:
        if not path.exists():
            continue
        size = sizes.get(path.name, 0)
        if path.stat().st_size < size:
            raise CheckpointError(f"{path} is shorter ({path.stat().st_size} bytes) than when the checkpoint was "
                                  f"written ({size} bytes); it was edited or truncated, start a new run directory")
        with path.open("r+b") as fh:
            fh.truncate(size)
