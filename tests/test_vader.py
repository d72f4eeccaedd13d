"""task=vader: VADER's human-rated lexicon as word-level sentiment in SST-2's template."""

from __future__ import annotations

import sys

import pytest

from conftest import compose_config, read_summary
from zorun.config import validate
from zorun.errors import ConfigError, ZorunError
from zorun.tasks import build_task, vader

SIZES = ("task.num_train=40", "task.num_dev=20", "task.num_test=30")


def vader_cfg(*overrides: str):
    cfg = compose_config("task=vader", *SIZES, *overrides)
    validate(cfg)
    return cfg.task


@pytest.fixture(scope="module")
def means():
    return vader.read_lexicon(vader.lexicon_path())


def word_of(prompt: str) -> str:
    """The rated word: the carrier's last word, before "." and SST-2's " It was"."""
    assert prompt.endswith(". It was")
    return prompt[: -len(". It was")].rsplit(" ", 1)[1]


def test_golden_prompts():
    assert vader.example(vader.Rated("abandon", -1.9)).prompt == "Put simply, the show was abandon. It was"
    ex = vader.example(vader.Rated("wonderful", 2.7))
    assert ex.prompt == "Overall, the book was wonderful. It was"
    assert ex.candidates == [" terrible", " great"] and ex.label == 1
    task = build_task(vader_cfg())
    assert [e.prompt for e in task.test[:2]] == ["Put simply, the show was curse. It was",
                                                 "To put it in one word, the concert was warmer. It was"]
    assert [e.label for e in task.test[:4]] == [0, 1, 0, 1]


def test_every_carrier_carries_a_share_of_the_words(means):
    counts = {}
    for r in vader.keep(means, 1.0):
        frame = vader.carrier(r.word)
        assert frame.endswith(f" was {r.word}.")
        counts[frame[: -len(r.word) - 1]] = counts.get(frame[: -len(r.word) - 1], 0) + 1
    assert len(counts) == len(vader.CARRIERS) and min(counts.values()) > 0.8 * max(counts.values())


def test_splits_are_deterministic_by_word_and_balanced():
    task = build_task(vader_cfg())
    again = build_task(vader_cfg())
    other = build_task(vader_cfg("task.seed=1"))
    for split in ("train", "dev", "test"):
        assert [e.prompt for e in task.split(split)] == [e.prompt for e in again.split(split)]
    assert [e.prompt for e in other.test] != [e.prompt for e in task.test]
    words = {s: [word_of(e.prompt) for e in task.split(s)] for s in ("train", "dev", "test")}
    assert {s: len(w) for s, w in words.items()} == {"train": 40, "dev": 20, "test": 30}
    assert len(set(words["train"]) | set(words["dev"]) | set(words["test"])) == 90  # no word in two splits
    for split in ("train", "dev", "test"):
        assert sum(e.label for e in task.split(split)) == len(task.split(split)) // 2
    # dev and test do not move when the training set grows
    bigger = build_task(vader_cfg("task.num_train=80"))
    assert [e.prompt for e in bigger.dev + bigger.test] == [e.prompt for e in task.dev + task.test]


def test_label_is_the_sign_of_the_mean_and_weak_words_are_dropped(means):
    task = build_task(vader_cfg("task.num_train=2000", "task.options.min_abs_mean=1.5"))
    for ex in task.train + task.dev + task.test:
        mean = means[word_of(ex.prompt)]
        assert abs(mean) >= 1.5 and ex.label == int(mean > 0)
    kept = {r.word for r in vader.keep(means, 1.0)}
    assert ":)" in means and "ok" in means and "can't stand" in means and "meh" in means  # in the lexicon,
    assert not {":)", "ok", "can't stand", "meh"} & kept  # dropped: not letters, too short, too weak
    assert {"abandon", "wonderful", "lol"} <= kept
    assert all(w.isalpha() and w.isascii() and len(w) >= 3 for w in kept)


def test_fewer_words_than_requested_warn_and_train_takes_the_rest(caplog):
    task = build_task(vader_cfg("task.num_train=5000", "task.options.min_abs_mean=3"))
    assert "fewer than the" in caplog.text and 0 < len(task.train) < 5000


def test_missing_package_is_one_line_with_the_pip_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "vaderSentiment", None)  # `import vaderSentiment` now raises ImportError
    with pytest.raises(ZorunError) as err:
        build_task(vader_cfg())
    assert "\n" not in str(err.value) and "pip install vaderSentiment" in str(err.value)


@pytest.mark.parametrize("override, problem", [("task.options.min_abs_mean=0", "min_abs_mean=0.0"),
                                               ("task.type=generation", "task.type=generation")])
def test_bad_options_are_config_errors(override, problem):
    with pytest.raises(ConfigError, match=problem):
        build_task(vader_cfg(override))


@pytest.mark.slow
def test_tiny_model_smoke_run_through_the_cli(cli, tmp_path):
    done = cli("task=vader", *SIZES, "budget=smoke", "budget.steps=4", "logger=none", "logger.progress=false",
               f"hydra.run.dir={tmp_path}", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = read_summary(tmp_path)
    assert summary["status"] == "completed" and summary["steps"] == 4
    assert set(summary["test"]) == {"accuracy", "loss"} and 0 <= summary["test"]["accuracy"] <= 1
