"""SQuAD-normalised exact match and token F1 (lower case, no punctuation, no articles).

Both follow the official SQuAD v1.1 script, as MeZO's metrics do: a prediction
and an answer that share no token score F1 0, even when both normalise to
nothing (the v2.0 script, made for unanswerable questions, scores that pair 1).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence, Tuple

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_em(pred: str, gold: str) -> float:
    return float(normalize(pred) == normalize(gold))


def squad_f1(pred: str, gold: str) -> float:
    p, g = normalize(pred).split(), normalize(gold).split()
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_scores(pred: str, answers: Sequence[str]) -> Tuple[float, float]:
    """(F1, EM) of a prediction against several gold answers: the best match counts, as in SQuAD and MeZO."""
    return max(squad_f1(pred, a) for a in answers), max(squad_em(pred, a) for a in answers)
