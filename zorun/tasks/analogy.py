"""task=analogy: the Google word-analogy questions as four-way multiple choice, offline.

The data is ``questions-words.txt`` (Mikolov et al. 2013, from word2vec,
Apache-2.0), which the ``gensim`` package ships in ``gensim/test/test_data``
(read from an installed gensim without importing it; task.path=FILE reads a copy):
19,544 questions "a b c d" (a is to b as c is to d) in 14 sections, five
semantic (capitals, currencies, US states, family) and nine syntactic
(comparatives, past tenses, plurals, ...). Each question here reads
``Athens is to Greece as Baghdad is to`` and its candidates are the gold
`` Iraq`` and three other right-hand words of the same section, drawn and
ordered by a hash of the question and task.seed.

Splits are by word pair: each section's pairs are shuffled with task.seed and
dealt to test, dev and train in proportion to num_test, num_dev and
num_train (a pair listed in two sections keeps its first deal); a question
belongs to a split when both its pairs do, so no pair, shown or asked, is in
two splits. A split keeps at most four questions per
asked pair, so large sections do not crowd out the rest; the questions are
then shuffled and cut to the requested count.
"""

from __future__ import annotations

import importlib.util
import logging
import random
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from omegaconf import DictConfig

from zorun.errors import ConfigError, ZorunError
from zorun.tasks.base import Example, Task, register_task
from zorun.tasks.templates import choice

log = logging.getLogger(__name__)

Pair = Tuple[str, str]
Question = Tuple[str, Pair, Pair]  # section, shown pair, asked pair
PER_ASKED_PAIR = 4
CANDIDATES = 4
SPLITS = ("test", "dev", "train")
FILE = "questions-words.txt"
FIXES = f"pip install gensim (it ships the file), or give a copy: task.path=/path/to/{FILE}"


def questions_path(path: Optional[str]) -> Path:
    """task.path if given, else the file inside an installed gensim, found without importing it (and SciPy)."""
    if path:
        given = Path(path).expanduser()
        if not given.is_file():
            raise ZorunError(f"task.path={path}: no such file; task=analogy needs the Google analogy questions "
                             f"({FILE}): fix the path, or drop task.path and pip install gensim")
        return given
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise ZorunError(f"task=analogy reads the Google analogy questions ({FILE}) and neither gensim nor "
                         f"task.path gives them; {FIXES}")
    found = Path(spec.origin).parent / "test" / "test_data" / FILE
    if not found.is_file():
        raise ZorunError(f"{found} is missing: this gensim does not ship the analogy questions; "
                         f"pip install --force-reinstall gensim, or task.path=/path/to/{FILE}")
    return found


def read_questions(path: Path) -> List[Question]:
    out, section = [], None
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if line.startswith(":"):
                section = line[1:].strip()
                continue
            words = line.split()
            if not words:
                continue
            if len(words) != 4 or section is None:
                raise ZorunError(f"{path}:{n}: not the {FILE} format (': section' lines, each followed by lines of "
                                 f"four words 'a b c d'); {FIXES}")
            out.append((section, (words[0], words[1]), (words[2], words[3])))
    if not out:
        raise ZorunError(f"{path} holds no questions; {FIXES}")
    return out


def deal_pairs(questions: List[Question], sizes: Dict[str, int], seed: int) -> Dict[Pair, str]:
    """Each section's pairs, shuffled with `seed`, dealt to the splits in proportion to their sizes; a pair
    of two sections (capital-common-countries and capital-world share many) keeps its first deal."""
    pairs: Dict[str, set] = defaultdict(set)
    for section, shown, asked in questions:
        pairs[section].update((shown, asked))
    total = sum(sizes.values())
    where: Dict[Pair, str] = {}
    for section in sorted(pairs):
        ordered = sorted(p for p in pairs[section] if p not in where)
        random.Random(f"{seed}:{section}").shuffle(ordered)
        start = 0
        for split in SPLITS:
            stop = start + round(len(ordered) * sizes[split] / total) if split != "train" else len(ordered)
            where.update({p: split for p in ordered[start:stop]})
            start = stop
    return where


def example(question: Question, answers: List[str], seed: int) -> Example:
    """The question with its gold and three distractors from `answers` (words that do not also answer it)."""
    section, (a, b), (c, d) = question
    rng = random.Random(f"{seed}:{a} {b} {c} {d}")
    options = [d] + rng.sample(sorted(set(answers) - {d}), CANDIDATES - 1)
    rng.shuffle(options)
    return choice(f"{a} is to {b} as {c} is to", [" " + w for w in options], options.index(d))


@register_task("analogy")
def build(cfg: DictConfig) -> Task:
    kind = getattr(cfg.type, "value", str(cfg.type))
    if kind != "classification":
        raise ConfigError(f"task.type={kind} does not fit task=analogy, a multiple-choice task; drop the override")
    unique: Dict[Tuple[Pair, Pair], Question] = {}
    for q in read_questions(questions_path(cfg.path)):  # capital-world repeats capital-common-countries
        unique.setdefault(q[1:], q)
    questions = list(unique.values())
    sizes = {"test": cfg.num_test, "dev": cfg.num_dev, "train": cfg.num_train}
    where = deal_pairs(questions, sizes, cfg.seed)
    answers: Dict[str, List[str]] = defaultdict(list)
    right_of: Dict[Tuple[str, str], set] = defaultdict(set)  # Glendale is in Arizona and in California
    for section, shown, asked in questions:
        answers[section] += [shown[1], asked[1]]
        for left, right in (shown, asked):
            right_of[(section, left)].add(right)
    per_split: Dict[str, List[Question]] = {s: [] for s in SPLITS}
    for q in questions:
        section, shown, asked = q
        split = where[asked]
        if where[shown] == split:
            per_split[split].append(q)
    out = {}
    for split in SPLITS:
        pool = per_split[split]
        random.Random(f"{cfg.seed}:{split}").shuffle(pool)
        taken: Dict[Tuple[str, Pair], int] = defaultdict(int)
        kept = []
        for q in pool:
            if taken[(q[0], q[2])] < PER_ASKED_PAIR:
                taken[(q[0], q[2])] += 1
                kept.append(q)
        if len(kept) < sizes[split]:
            log.warning("task=analogy: %d %s questions, fewer than the %d requested; using all of them",
                        len(kept), split, sizes[split])
        out[split] = [example(q, [w for w in answers[q[0]] if w not in right_of[(q[0], q[2][0])]], cfg.seed)
                      for q in kept[: sizes[split]]]
    return Task(name="analogy", type="classification", train_as_classification=cfg.train_as_classification,
                **out)
