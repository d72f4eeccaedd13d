"""MeZO's protocol for its eleven benchmark tasks: which records, rendered by which template.

Training and dev examples come from the hub's train split, test examples
from its validation split. As in MeZO, one seeded permutation of the train
split yields num_train + num_dev records, the last num_dev of them dev, and a
seeded permutation of the validation split yields the first num_test. MeZO
draws both with NumPy's legacy generator (``np.random.seed(seed)`` then
``permutation``), and so does this module: the same seed picks the same
records, in the same order, as MeZO's runs.

In-context demonstrations are drawn from the whole train split (see
zorun/tasks/icl.py), rendered only when drawn.

A split smaller than requested is used whole, with a warning, as MeZO does:
with the defaults CB's 250 training records become 150 train + 100 dev and
COPA's 400 become 300 + 100, and their validation splits (56 and 100) are
the whole test set.
"""

from __future__ import annotations

import logging
from typing import List, Sequence

import numpy as np
from omegaconf import DictConfig

from zorun.errors import ZorunError
from zorun.tasks.base import Example, Task, register_task, require_type
from zorun.tasks.hub import Split, load_splits
from zorun.tasks.icl import DemoPool
from zorun.tasks.templates import SPECS, RecordError, TaskSpec

log = logging.getLogger(__name__)


def draw(n: int, want: int, seed: int) -> List[int]:
    """The first `want` indices of MeZO's seeded permutation of range(n)."""
    return np.random.RandomState(seed).permutation(n)[:want].tolist()


def render(spec: TaskSpec, split: Split, indices: Sequence[int]) -> List[Example]:
    missing = [f for f in spec.fields if f not in split.rows.column_names]
    if missing:
        raise ZorunError(f"{split.source}: no field '{missing[0]}'; task={spec.name} reads the hub fields "
                         f"{', '.join(spec.fields)}")
    out = []
    for i, rec in zip(indices, split.rows.select(indices)):
        absent = [f for f in spec.fields if rec[f] is None]
        if absent:
            raise ZorunError(f"{split.source}: row {i} has no field '{absent[0]}'")
        try:
            out.append(spec.render(rec))
        except RecordError as err:
            raise ZorunError(f"{split.source}: row {i}: {err}") from None
    return out


def _short(name: str, split: Split, have: int, want: int, use: str) -> None:
    log.warning("task=%s: %s has %d records, fewer than the %d requested; using all of them (%s)",
                name, split.source, have, want, use)


def check(cfg: DictConfig) -> None:
    require_type(cfg, SPECS[cfg.name].kind)


def build(cfg: DictConfig) -> Task:
    spec = SPECS[cfg.name]
    want = cfg.num_train + cfg.num_dev
    needed = {}
    if want or cfg.icl_demos:
        needed["train"] = "train and dev examples (and in-context demonstrations) come from it"
    if cfg.num_test:
        needed["validation"] = "test examples come from it"
    splits = load_splits(cfg, needed)
    train: List[Example] = []
    dev: List[Example] = []
    test: List[Example] = []
    pool = None
    if "train" in needed:
        source = splits["train"]
        chosen = draw(len(source.rows), want, cfg.seed)
        cut = len(chosen) - min(cfg.num_dev, len(chosen))
        if len(chosen) < want:
            _short(cfg.name, source, len(chosen), want, f"{cut} train + {len(chosen) - cut} dev")
        train, dev = render(spec, source, chosen[:cut]), render(spec, source, chosen[cut:])
        pool = DemoPool(len(source.rows), lambda indices, source=source: render(spec, source, indices), chosen[cut:])
    if cfg.num_test:
        source = splits["validation"]
        chosen = draw(len(source.rows), cfg.num_test, cfg.seed)
        if len(chosen) < cfg.num_test:
            _short(cfg.name, source, len(chosen), cfg.num_test, f"{len(chosen)} test")
        test = render(spec, source, chosen)
    return Task(name=cfg.name, type=spec.kind, train=train, dev=dev, test=test,
                train_as_classification=cfg.train_as_classification, demo_pool=pool)


for _name in SPECS:
    register_task(_name, check)(build)
