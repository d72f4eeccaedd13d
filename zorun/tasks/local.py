"""task=local: the user's own JSONL file, validated line by line.

Classification: {"prompt": str, "candidates": [str, ...], "label": int}; the
candidates may instead be given once as task.candidates. Generation
(task.type=generation): {"prompt": str, "answers": [str, ...]} (or "answer").
Every problem is reported with the file and the line number.

The splits are sized from the file: task.num_dev and task.num_test as set
when they leave at least half the file to train on, else 10% each (a
200-line file: 160 train, 20 dev, 20 test), said in one warning line.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import List

from omegaconf import DictConfig

from zorun.errors import ConfigError, ZorunError
from zorun.tasks.base import Example, Task, register_task, split_examples

log = logging.getLogger(__name__)
EVAL_FRACTION = 0.1  # of a small file, for dev and for test each

def _fail(path: Path, line: int, why: str) -> ZorunError:
    return ZorunError(f"{path}:{line}: {why}")


def _is_str_list(x) -> bool:
    return isinstance(x, list) and len(x) > 0 and all(isinstance(s, str) for s in x)


def read_jsonl(path: Path, kind: str, shared_candidates: List[str]) -> List[Example]:
    if path.is_dir():
        raise ZorunError(f"task.path={path} is a directory; give a JSONL file with one example per line")
    if not path.is_file():
        raise ZorunError(f"task.path={path} does not exist; give a JSONL file with one example per line")
    examples = []
    with path.open("rb") as fh:
        for n, data in enumerate(fh, start=1):
            try:
                raw = data.decode("utf-8")
            except UnicodeDecodeError as err:
                raise _fail(path, n, f"not UTF-8 (byte 0x{data[err.start]:02x} at column {err.start + 1}); "
                                     f"save the file as UTF-8") from None
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError as err:
                raise _fail(path, n, f"malformed JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(rec, dict):
                raise _fail(path, n, "expected a JSON object")
            if not isinstance(rec.get("prompt"), str):
                raise _fail(path, n, _field(rec, "prompt", "a string"))
            if kind == "generation":
                answers = rec.get("answers", [rec["answer"]] if isinstance(rec.get("answer"), str) else None)
                if not _is_str_list(answers):
                    raise _fail(path, n, "missing field 'answers' (a non-empty list of strings) or 'answer'")
                examples.append(Example(prompt=rec["prompt"], answers=answers))
                continue
            cands = rec.get("candidates", shared_candidates or None)
            if not _is_str_list(cands) or len(cands) < 2:
                raise _fail(path, n, "missing field 'candidates' (two or more strings) and no task.candidates")
            label = rec.get("label")
            if not isinstance(label, int) or isinstance(label, bool):
                raise _fail(path, n, _field(rec, "label", "an integer index into the candidates"))
            if not 0 <= label < len(cands):
                raise _fail(path, n, f"label {label} is out of range for {len(cands)} candidates (0..{len(cands) - 1})")
            examples.append(Example(prompt=rec["prompt"], candidates=list(cands), label=label))
    if not examples:
        raise ZorunError(f"task.path={path} holds no examples")
    return examples


def _field(rec: dict, key: str, expected: str) -> str:
    """A field that is missing, or there with the wrong type (named, with its JSON type)."""
    if key not in rec:
        return f"missing field '{key}' ({expected})"
    kind = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "a list",
            dict: "an object", type(None): "null"}.get(type(rec[key]), type(rec[key]).__name__)
    return f"field '{key}' is {kind}, expected {expected}"


def sized(cfg: DictConfig, n: int) -> DictConfig:
    """The task config with dev and test sizes that leave a file of n examples at least half of them to train on."""
    if cfg.num_dev + cfg.num_test <= n // 2:
        return cfg
    if n < 3:
        raise ZorunError(f"task.path={cfg.path} holds {n} example{'s' * (n != 1)}; a run needs at least 3 "
                         f"(train, dev and test), a few hundred to measure anything")
    share = max(1, int(n * EVAL_FRACTION))
    out = cfg.copy()
    out.num_dev, out.num_test = min(cfg.num_dev, share), min(cfg.num_test, share)
    log.warning("task.path=%s holds %d examples, too few for task.num_dev=%d and task.num_test=%d with half left to "
                "train on: using %d dev, %d test and %d train (%d%% each for dev and test); set task.num_dev and "
                "task.num_test to choose", cfg.path, n, cfg.num_dev, cfg.num_test, out.num_dev, out.num_test,
                min(cfg.num_train, n - out.num_dev - out.num_test), round(100 * EVAL_FRACTION))
    return out


def check(cfg: DictConfig) -> None:
    if not cfg.path:
        raise ConfigError("task=local needs task.path=FILE.jsonl (one JSON object per line)")


@register_task("local", check)
def build(cfg: DictConfig) -> Task:
    kind = cfg.type.value if hasattr(cfg.type, "value") else str(cfg.type)
    examples = read_jsonl(Path(cfg.path), kind, list(cfg.candidates))
    return Task(name="local", type=kind, train_as_classification=cfg.train_as_classification,
                **split_examples(examples, sized(cfg, len(examples))))
