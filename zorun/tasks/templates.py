"""MeZO's prompt templates for its eleven benchmark tasks, one renderer per task.

The facts (wording, verbalizers, label order, which BoolQ and ReCoRD variants)
follow MeZO's public ``large_models/templates.py`` and ``tasks.py``. MeZO forms
each candidate's text as ``encode(record) + verbalizer``, strips spaces at both
ends and scores the tokens after the prompt. :func:`choice` keeps exactly that
split, so a prompt never ends in a space and a candidate carries whatever
joins it to the prompt (" great" after "It was", "Yes" after a newline).

A renderer reads the hub fields of one record and raises :class:`RecordError`
for a value it cannot use; the loader adds the file and row to the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from zorun.tasks.base import Example

Record = Dict[str, Any]


class RecordError(ValueError):
    """A record whose fields are present but unusable (label out of range, wrong type, ...)."""


# ------------------------------------------------------------------ helpers
def choice(raw_prompt: str, suffixes: Sequence[str], label: int, gold: Optional[List[int]] = None) -> Example:
    prompt = raw_prompt.strip(" ")
    candidates = [(raw_prompt + s).strip(" ")[len(prompt):] for s in suffixes]
    return Example(prompt=prompt, candidates=candidates, label=label, gold=list(gold) if gold else [])


def generation(raw_prompt: str, answers: List[str]) -> Example:
    """MeZO trains on " <first answer>\\n": the newline teaches the model where to stop."""
    prompt = raw_prompt.strip(" ")
    target = (raw_prompt + f" {answers[0]}\n").strip(" ")[len(prompt):]
    return Example(prompt=prompt, answers=list(answers), target=target)


def text(rec: Record, key: str) -> str:
    value = rec[key]
    if not isinstance(value, str):
        raise RecordError(f"field '{key}' must be a string, not {type(value).__name__}")
    return value


def label(rec: Record, n: int, key: str = "label") -> int:
    value = rec[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
        raise RecordError(f"{key} {value!r} is out of range: this task's labels are 0..{n - 1}")
    return value


def strings(value: Any, what: str) -> List[str]:
    if not isinstance(value, list) or not value or not all(isinstance(s, str) for s in value):
        raise RecordError(f"{what} must be a non-empty list of strings")
    return value


def nested(rec: Record, key: str, sub: str) -> List[str]:
    value = rec[key]
    if not isinstance(value, dict) or sub not in value:
        raise RecordError(f"field '{key}' must be an object with a '{sub}' list")
    return strings(value[sub], f"field '{key}.{sub}'")


# ---------------------------------------------------------------- templates
def sst2(rec: Record) -> Example:
    return choice(f"{text(rec, 'sentence').strip()} It was", [" terrible", " great"], label(rec, 2))


def rte(rec: Record) -> Example:
    raw = f"{text(rec, 'premise')}\nDoes this mean that \"{text(rec, 'hypothesis')}\" is true? Yes or No?\n"
    return choice(raw, ["Yes", "No"], label(rec, 2))  # 0 entailment, 1 not_entailment


def cb(rec: Record) -> Example:
    raw = f"Suppose {text(rec, 'premise')} Can we infer that \"{text(rec, 'hypothesis')}\"? Yes, No, or Maybe?\n"
    return choice(raw, ["Yes", "No", "Maybe"], label(rec, 3))  # entailment, contradiction, neutral


def boolq(rec: Record) -> Example:
    """google/boolq's boolean `answer`; MeZO's default (third) BoolQ template."""
    question = text(rec, "question")
    if not question.endswith("?"):
        question += "?"
    question = question[0].upper() + question[1:]
    answer = rec["answer"]
    if not isinstance(answer, bool):
        raise RecordError(f"field 'answer' must be true or false, not {answer!r}")
    return choice(f"{text(rec, 'passage')} {question}\n", ["Yes", "No"], 0 if answer else 1)


def wsc(rec: Record) -> Example:
    raw = (f"{text(rec, 'text')}\nIn the previous sentence, does the pronoun "
           f"\"{text(rec, 'span2_text').lower()}\" refer to {text(rec, 'span1_text')}? Yes or No?\n")
    return choice(raw, ["No", "Yes"], label(rec, 2))


def wic(rec: Record) -> Example:
    raw = (f"Does the word \"{text(rec, 'word')}\" have the same meaning in these two sentences? Yes, No?\n"
           f"{text(rec, 'sentence1')}\n{text(rec, 'sentence2')}\n")
    return choice(raw, ["No", "Yes"], label(rec, 2))


def multirc(rec: Record) -> Example:
    """One example per (paragraph, question, candidate answer): is the answer correct?"""
    raw = (f"{text(rec, 'paragraph')}\nQuestion: {text(rec, 'question')}\n"
           f"I found this answer \"{text(rec, 'answer')}\". Is that correct? Yes or No?\n")
    return choice(raw, ["No", "Yes"], label(rec, 2))


def _copa_choice(option: str) -> str:
    """The alternative continues the sentence: its first word loses its capital, except "I"."""
    words = option.split(" ")
    if words[0] != "I":
        words[0] = words[0].lower()
    return " ".join(words)


def copa(rec: Record) -> Example:
    question = text(rec, "question")
    if question not in ("cause", "effect"):
        raise RecordError(f"field 'question' must be 'cause' or 'effect', not {question!r}")
    conjunction = " so " if question == "effect" else " because "
    premise = text(rec, "premise").rstrip()
    if premise.endswith("."):
        premise = premise[:-1]
    options = [_copa_choice(text(rec, "choice1")), _copa_choice(text(rec, "choice2"))]
    return choice(premise + conjunction, options, label(rec, 2))


def record(rec: Record) -> Example:
    """Each entity fills @placeholder in the query; every entity among the answers counts as correct."""
    passage = text(rec, "passage").replace("@highlight\n", "- ")
    query = text(rec, "query")
    entities = strings(rec["entities"], "field 'entities'")
    answers = strings(rec["answers"], "field 'answers'")
    gold = [i for i, e in enumerate(entities) if e in answers]
    if not gold:
        raise RecordError(f"none of its answers {answers} is among its entities")
    trained = entities.index(answers[0]) if answers[0] in entities else gold[0]
    return choice(f"{passage}\n-", [" " + query.replace("@placeholder", e) for e in entities], trained, gold)


def squad(rec: Record) -> Example:
    raw = (f"Title: {text(rec, 'title')}\nContext: {text(rec, 'context')}\n"
           f"Question: {text(rec, 'question').strip()}\nAnswer:")
    return generation(raw, nested(rec, "answers", "text"))


def drop(rec: Record) -> Example:
    raw = f"Passage: {text(rec, 'passage')}\nQuestion: {text(rec, 'question').strip()}\nAnswer:"
    return generation(raw, nested(rec, "answers_spans", "spans"))


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # classification | generation
    hub: Tuple[str, Optional[str]]  # default dataset id and config (MeZO's sources)
    fields: Tuple[str, ...]  # the hub fields the template reads
    render: Callable[[Record], Example]


_GLUE, _SUPER_GLUE = "nyu-mll/glue", "aps/super_glue"
SPECS: Dict[str, TaskSpec] = {s.name: s for s in (
    TaskSpec("sst2", "classification", (_GLUE, "sst2"), ("sentence", "label"), sst2),
    TaskSpec("rte", "classification", (_SUPER_GLUE, "rte"), ("premise", "hypothesis", "label"), rte),
    TaskSpec("cb", "classification", (_SUPER_GLUE, "cb"), ("premise", "hypothesis", "label"), cb),
    TaskSpec("boolq", "classification", ("google/boolq", None), ("passage", "question", "answer"), boolq),
    TaskSpec("wsc", "classification", (_SUPER_GLUE, "wsc.fixed"), ("text", "span1_text", "span2_text", "label"), wsc),
    TaskSpec("wic", "classification", (_SUPER_GLUE, "wic"), ("word", "sentence1", "sentence2", "label"), wic),
    TaskSpec("multirc", "classification", (_SUPER_GLUE, "multirc"), ("paragraph", "question", "answer", "label"),
             multirc),
    TaskSpec("copa", "classification", (_SUPER_GLUE, "copa"),
             ("premise", "choice1", "choice2", "question", "label"), copa),
    TaskSpec("record", "classification", (_SUPER_GLUE, "record"), ("passage", "query", "entities", "answers"),
             record),
    TaskSpec("squad", "generation", ("rajpurkar/squad", "plain_text"), ("title", "context", "question", "answers"),
             squad),
    TaskSpec("drop", "generation", ("ucinlp/drop", None), ("passage", "question", "answers_spans"), drop),
)}
