"""task=vader: word-level sentiment with human labels, offline, in SST-2's template.

The data is VADER's lexicon (``vader_lexicon.txt`` in the MIT-licensed
``vaderSentiment`` package): English tokens, each rated by 10 people on -4..+4.
Each kept word becomes one example: a review-like carrier sentence ending in
the word, rendered by SST-2's template (``<sentence> It was`` -> `` terrible`` |
`` great``); the label is the sign of the mean rating. This is word-level
sentiment in a review frame, not sentence-level sentiment: it is no stand-in
for SST-2.

Kept: tokens of three or more letters a-z (emoticons, multi-word entries,
tokens with digits or punctuation, and one- and two-letter tokens go), whose
mean rating is at least ``task.options.min_abs_mean`` away from zero. A token
listed twice keeps its last rating, as VADER does.

The carriers are ten review frames, "<something reviewed> was <word>.", so
the word is read as a verdict; a noun or a verb there ("the meal was
abandon") is ungrammatical but still legible. Frames that quote the word
('... one word: "abandon".') read better, yet SmolLM2-135M then answers
" great" for almost every word. The carrier of a word is a hash of the word:
the same word always gets the same sentence, whatever the seed or split sizes.

Splits are by word and balanced: the negative and the positive words are each
shuffled with task.seed and interleaved, so every split alternates labels; the
test split takes the first num_test, dev the next num_dev, train the next
num_train. The majority (negative) class loses the words it has beyond the
minority's count.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import torch
from omegaconf import DictConfig

from zorun.errors import ConfigError, ZorunError
from zorun.tasks.base import Example, Task, register_task, require_type
from zorun.tasks.templates import sst2

log = logging.getLogger(__name__)

CARRIERS = (
    "In one word, the film was {w}.",
    "In one word, the hotel was {w}.",
    "In a word, the meal was {w}.",
    "To put it in one word, the concert was {w}.",
    "Honestly, the service was {w}.",
    "Overall, the book was {w}.",
    "Put simply, the show was {w}.",
    "The acting in this film was {w}.",
    "All in all, the trip was {w}.",
    "The food was {w}.",
)
MIN_LETTERS = 3
DEFAULT_MIN_ABS_MEAN = 1.0


@dataclass(frozen=True)
class Rated:
    word: str
    mean: float


def lexicon_path() -> Path:
    """The lexicon file inside the installed package; a missing package is the user's one-line fix."""
    try:
        import vaderSentiment
    except ImportError:
        raise ZorunError("task=vader reads the lexicon of the vaderSentiment package, which is not installed; "
                         "pip install vaderSentiment") from None
    path = Path(vaderSentiment.__file__).parent / "vader_lexicon.txt"
    if not path.is_file():
        raise ZorunError(f"{path} is missing: the vaderSentiment install is broken; "
                         f"pip install --force-reinstall vaderSentiment")
    return path


def read_lexicon(path: Path) -> Dict[str, float]:
    """token -> mean rating; a token listed twice keeps its last rating, as VADER does."""
    means: Dict[str, float] = {}
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 2:
                continue
            try:
                means[fields[0]] = float(fields[1])
            except ValueError:
                raise ZorunError(f"{path}:{n}: no mean rating in the second column; "
                                 f"pip install --force-reinstall vaderSentiment") from None
    return means


def keep(means: Dict[str, float], min_abs_mean: float) -> List[Rated]:
    """The words the task uses, in lexicon order: alphabetic, three letters or more, clearly rated."""
    return [Rated(w, m) for w, m in means.items()
            if len(w) >= MIN_LETTERS and w.isascii() and w.isalpha() and abs(m) >= min_abs_mean]


def carrier(word: str) -> str:
    return CARRIERS[zlib.crc32(word.encode("utf-8")) % len(CARRIERS)].format(w=word)


def example(rated: Rated) -> Example:
    return sst2({"sentence": carrier(rated.word), "label": int(rated.mean > 0)})


def balanced_order(words: List[Rated], seed: int) -> List[Rated]:
    """Negative and positive words, each shuffled with `seed`, interleaved pairwise (negative first)."""
    gen = torch.Generator().manual_seed(seed)
    by_label = []
    for positive in (False, True):
        group = [r for r in words if (r.mean > 0) == positive]
        by_label.append([group[i] for i in torch.randperm(len(group), generator=gen).tolist()])
    return [r for pair in zip(*by_label) for r in pair]


def threshold(cfg: DictConfig) -> float:
    """task.options.min_abs_mean: how far from 0 a kept word's mean rating is."""
    return float(cfg.options.get("min_abs_mean", DEFAULT_MIN_ABS_MEAN))


def check(cfg: DictConfig) -> None:
    require_type(cfg, "classification")
    if not 0 < threshold(cfg) <= 4:
        raise ConfigError(f"task.options.min_abs_mean={threshold(cfg)} is out of range; "
                          f"give a value in (0, 4] (ratings run from -4 to +4)")


@register_task("vader", check)
def build(cfg: DictConfig) -> Task:
    min_abs_mean = threshold(cfg)
    order = balanced_order(keep(read_lexicon(lexicon_path()), min_abs_mean), cfg.seed)
    want = cfg.num_test + cfg.num_dev + cfg.num_train
    if want > len(order):
        log.warning("task=vader: %d balanced words at min_abs_mean=%g, fewer than the %d requested; "
                    "train gets what test and dev leave", len(order), min_abs_mean, want)
    test = order[: cfg.num_test]
    dev = order[cfg.num_test : cfg.num_test + cfg.num_dev]
    train = order[cfg.num_test + cfg.num_dev : want]
    return Task(name="vader", type="classification", train_as_classification=cfg.train_as_classification,
                train=[example(r) for r in train], dev=[example(r) for r in dev], test=[example(r) for r in test])
