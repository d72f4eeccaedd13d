"""A benchmark's train and validation splits, read through `datasets`.

From the hub (``task.dataset.path`` / ``task.dataset.name``: parquet-backed
repositories, since `datasets` 4+ runs no loading scripts) or from local
copies with the hub's fields (``task.data_files.train`` / ``.validation``:
json, jsonl, parquet or csv, read by the matching `datasets` builder). Every
failure ends in one line naming the dataset or file and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable

from omegaconf import DictConfig

from zorun.errors import ZorunError

FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
LOCAL_HINT = ("give local copies with the hub's fields: task.data_files.train=FILE "
              "task.data_files.validation=FILE (json, jsonl, parquet or csv)")


@dataclass
class Split:
    rows: Any  # a datasets.Dataset (`datasets` is imported where a split is loaded)
    source: str  # what messages name: the file, or "<id> (<config>) <split> split"


def _datasets():
    """`datasets` and its error class, imported on first use: it takes seconds, and only hub tasks need it."""
    import datasets
    from datasets.exceptions import DatasetsError

    return datasets, DatasetsError


def _cause(err: BaseException) -> str:
    """The innermost message, on one line: DatasetGenerationError hides the parser's own."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    first = " ".join(str(err).split())[:200]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def _load_file(split: str, path: str) -> Split:
    key = f"task.data_files.{split}"
    file = Path(path)
    fmt = FORMATS.get(file.suffix.lower())
    if fmt is None:
        raise ZorunError(f"{key}={path}: unknown format '{file.suffix}'; use .json, .jsonl, .parquet or .csv")
    if not file.is_file():
        raise ZorunError(f"{key}={path} does not exist; point it at a local copy of the {split} split")
    size = file.stat().st_size
    if size == 0 or (fmt != "parquet" and size <= 4096 and not file.read_text(encoding="utf-8").strip()):
        raise ZorunError(f"{path}: the {split} split is empty (no records)")
    datasets, DatasetsError = _datasets()
    try:
        rows = datasets.load_dataset(fmt, data_files={split: str(file)}, split=split)
    except (DatasetsError, OSError, ValueError, StopIteration) as err:
        raise ZorunError(f"{path}: cannot be read as {fmt} ({_cause(err)})") from err
    if len(rows) == 0:
        raise ZorunError(f"{path}: the {split} split is empty (no records)")
    return Split(rows, path)


def _load_hub(cfg: DictConfig, needed: Iterable[str]) -> Dict[str, Split]:
    path, name = cfg.dataset.path, cfg.dataset.name
    label = f"{path} ({name})" if name else path
    datasets, DatasetsError = _datasets()
    try:
        splits = datasets.load_dataset(path, name)
    except (DatasetsError, OSError, ValueError) as err:
        raise ZorunError(f"cannot load dataset {label} for task={cfg.name} from the hub or the local cache "
                         f"({_cause(err)}); {LOCAL_HINT}") from err
    out = {}
    for split in needed:
        if split not in splits:
            raise ZorunError(f"dataset {label} has no '{split}' split (it has: {', '.join(splits)}); "
                             f"choose another task.dataset or {LOCAL_HINT}")
        if len(splits[split]) == 0:
            raise ZorunError(f"dataset {label}: the {split} split is empty (no records)")
        out[split] = Split(splits[split], f"{label} {split} split")
    return out


def load_splits(cfg: DictConfig, needed: Dict[str, str]) -> Dict[str, Split]:
    """The splits `needed` maps to why (train, validation), from task.data_files when any is set, else the hub."""
    files = cfg.data_files
    if not (files.train or files.validation):
        if not cfg.dataset.path:
            raise ZorunError(f"task={cfg.name} has no task.dataset.path; set it to a hub id, or {LOCAL_HINT}")
        return _load_hub(cfg, needed)
    out = {}
    for split in needed:
        if not files[split]:
            raise ZorunError(f"task.data_files.{split} is not set, and task={cfg.name} needs its {split} split "
                             f"({needed[split]}); set task.data_files.{split}=FILE")
        out[split] = _load_file(split, files[split])
    return out
