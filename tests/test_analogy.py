"""task=analogy: the Google analogy questions (gensim's copy) as four-way multiple choice, split by word pair."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import re
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from zorun.paths import CONF_DIR
from zorun.config import validate
from zorun.errors import ZorunError
from zorun.run import Run
from zorun.tasks import analogy, build_task

CAPITALS = [("Athens", "Greece"), ("Baghdad", "Iraq"), ("Bern", "Switzerland"), ("Cairo", "Egypt"),
            ("Havana", "Cuba"), ("Lima", "Peru"), ("Oslo", "Norway"), ("Paris", "France"), ("Rome", "Italy"),
            ("Tokyo", "Japan")]
TOWNS = [(f"Town{i}", f"Land{i}") for i in range(24)]
WORDS = [(f"word{i}", f"word{i}s") for i in range(24)]
HAS_GENSIM = importlib.util.find_spec("gensim") is not None


def write_questions(path, sections):
    lines = []
    for name, pairs in sections.items():
        lines.append(f": {name}")
        lines += [f"{a} {b} {c} {d}" for (a, b), (c, d) in itertools.permutations(pairs, 2)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def small_file(tmp_path):
    return write_questions(tmp_path / "questions-words.txt", {"capital": TOWNS, "gram8-plural": WORDS})


def analogy_cfg(path, *overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["task=analogy", f"task.path={path}", "task.num_train=40",
                                           "task.num_dev=12", "task.num_test=16", *overrides])
    validate(cfg)
    return cfg


def asked_and_shown(ex):
    a, b, c = re.fullmatch(r"(\S+) is to (\S+) as (\S+) is to", ex.prompt).groups()
    return (c, ex.candidates[ex.label].strip()), (a, b)


def test_prompt_candidates_and_gold(small_file):
    task = build_task(analogy_cfg(small_file).task)
    for ex in task.train + task.dev + task.test:
        asked, shown = asked_and_shown(ex)
        section = TOWNS if asked in TOWNS else WORDS
        assert asked in section and shown in section and asked != shown
        assert len(ex.candidates) == 4 and len(set(ex.candidates)) == 4
        assert {c.strip() for c in ex.candidates} <= {b for _, b in section}  # distractors: the same section
    ex = analogy.example(("capital", ("Athens", "Greece"), ("Baghdad", "Iraq")), [b for _, b in CAPITALS], 0)
    assert ex.prompt == "Athens is to Greece as Baghdad is to" and ex.candidates[ex.label] == " Iraq"
    assert analogy.example(("capital", ("Athens", "Greece"), ("Baghdad", "Iraq")),
                           [b for _, b in CAPITALS], 0) == ex  # the same question, the same candidates


def test_splits_are_deterministic_and_no_pair_crosses_them(small_file):
    task = build_task(analogy_cfg(small_file).task)
    assert (len(task.train), len(task.dev), len(task.test)) == (40, 12, 16)
    again = build_task(analogy_cfg(small_file).task)
    assert [e.prompt for e in again.train + again.dev + again.test] == \
        [e.prompt for e in task.train + task.dev + task.test]
    other = build_task(analogy_cfg(small_file, "task.seed=1").task)
    assert [e.prompt for e in other.test] != [e.prompt for e in task.test]
    pairs = {s: {p for ex in task.split(s) for p in asked_and_shown(ex)} for s in ("train", "dev", "test")}
    assert not (pairs["train"] & pairs["dev"] or pairs["train"] & pairs["test"] or pairs["dev"] & pairs["test"])
    for split in ("train", "dev", "test"):
        asked = [asked_and_shown(ex)[0] for ex in task.split(split)]
        assert max(asked.count(p) for p in asked) <= analogy.PER_ASKED_PAIR


def test_another_right_answer_is_never_a_distractor_and_repeats_count_once(tmp_path):
    """city-in-state has Glendale in Arizona and in California; capital-world repeats capital-common-countries."""
    towns = [("Glendale", "Arizona"), ("Glendale", "California")] + TOWNS[:10]
    path = write_questions(tmp_path / "q.txt", {"capital-common-countries": CAPITALS[:4], "capital-world": CAPITALS,
                                                "city-in-state": towns})
    task = build_task(analogy_cfg(path, "task.num_train=1000", "task.num_dev=0", "task.num_test=0").task)
    glendale = [ex for ex in task.train if ex.prompt.endswith("as Glendale is to")]
    assert glendale and all(len({" Arizona", " California"} & set(ex.candidates)) == 1 for ex in glendale)
    prompts = [(ex.prompt, ex.candidates[ex.label]) for ex in task.train]
    assert len(prompts) == len(set(prompts))


def test_too_few_questions_warn_and_take_all(small_file, caplog):
    task = build_task(analogy_cfg(small_file, "task.num_train=5000").task)
    assert "fewer than the 5000 requested" in caplog.text and 40 < len(task.train) < 5000


def test_the_file_comes_from_an_installed_gensim_without_importing_it(small_file, tmp_path, monkeypatch):
    data = tmp_path / "site" / "gensim" / "test" / "test_data"
    data.mkdir(parents=True)
    (data.parent.parent / "__init__.py").write_text("raise ImportError('gensim must not be imported')\n")
    (data / "questions-words.txt").write_text(small_file.read_text())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert analogy.questions_path(None) == data / "questions-words.txt"
    assert analogy.questions_path(str(small_file)) == small_file  # task.path wins
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["task=analogy", "task.num_train=40", "task.num_dev=12", "task.num_test=16"])
    assert len(build_task(cfg.task).test) == 16


def test_no_gensim_no_path_a_wrong_path_and_a_foreign_file_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ZorunError) as err:
        analogy.questions_path(None)
    assert str(err.value) == ("task=analogy reads the Google analogy questions (questions-words.txt) and neither "
                              "gensim nor task.path gives them; pip install gensim (it ships the file), or give a "
                              "copy: task.path=/path/to/questions-words.txt")
    with pytest.raises(ZorunError, match=r"^task.path=.*nope.txt: no such file; .*pip install gensim$"):
        analogy.questions_path(str(tmp_path / "nope.txt"))
    bad = tmp_path / "questions-words.txt"
    bad.write_text(": capital\nAthens Greece Baghdad\n")
    with pytest.raises(ZorunError, match=r"questions-words.txt:2: not the questions-words.txt format") as err:
        analogy.read_questions(bad)
    assert "\n" not in str(err.value)
    bad.write_text("")
    with pytest.raises(ZorunError, match="holds no questions"):
        analogy.read_questions(bad)


def test_a_missing_file_ends_the_cli_run_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "zorun", "task=analogy", f"task.path={tmp_path / 'nope.txt'}",
                           "budget=smoke", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("zorun: error:")]
    assert len(errors) == 1 and "nope.txt: no such file" in errors[0], proc.stderr


@pytest.mark.skipif(not HAS_GENSIM, reason="gensim is not installed (pip install gensim)")
def test_golden_questions_from_gensims_file():
    questions = analogy.read_questions(analogy.questions_path(None))
    assert len(questions) == 19544 and questions[0] == ("capital-common-countries", ("Athens", "Greece"),
                                                        ("Baghdad", "Iraq"))
    task = build_task(analogy_cfg(analogy.questions_path(None), "task.num_train=1000", "task.num_dev=200",
                                  "task.num_test=500").task)
    assert (len(task.train), len(task.dev), len(task.test)) == (1000, 200, 500)
    ex = task.test[0]
    assert (ex.prompt, ex.candidates, ex.label) == ("sharp is to sharper as short is to",
                                                    [" easier", " older", " hotter", " shorter"], 3)


def test_tiny_model_smoke_run(small_file, tmp_path):
    run = Run(analogy_cfg(small_file, "budget=smoke", "budget.steps=4", "logger=none", "logger.progress=false"),
              str(tmp_path / "run"))
    run.setup()
    run.train()
    run.cleanup()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 4
    assert set(summary["test"]) == {"accuracy", "loss"}
