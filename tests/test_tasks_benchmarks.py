"""The eleven MeZO benchmark tasks, built from local files in each hub's schema.

Per task: the rendered prompt and candidates of a known record (golden
strings written from MeZO's templates), label mapping, MeZO's seeded split,
and a tiny-model run with budget=smoke. Then every bad-input error, and ICL.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from conftest import compose_config
from zorun.config import ConfigError, validate
from zorun.errors import ZorunError
from zorun.run import Run
from zorun.tasks import build_task
from zorun.tasks.icl import SEPARATOR

# task -> (validation record, golden prompt, golden candidates or None, expected label or answers/target)
GOLDEN = {
    "sst2": ({"sentence": "a gripping , funny film ", "label": 1, "idx": 7},
             "a gripping , funny film It was", [" terrible", " great"], 1),
    "rte": ({"premise": "The cat sat on the mat.", "hypothesis": "A cat is sitting.", "idx": 0, "label": 0},
            'The cat sat on the mat.\nDoes this mean that "A cat is sitting." is true? Yes or No?\n', ["Yes", "No"], 0),
    "cb": ({"premise": "It rained all day.", "hypothesis": "The ground is wet.", "idx": 0, "label": 2},
           'Suppose It rained all day. Can we infer that "The ground is wet."? Yes, No, or Maybe?\n',
           ["Yes", "No", "Maybe"], 2),
    "boolq": ({"question": "is paris the capital of france", "answer": True, "passage": "Paris is the capital of France."},
              "Paris is the capital of France. Is paris the capital of france?\n", ["Yes", "No"], 0),
    "wsc": ({"text": "Mark told Pete many lies about himself.", "span1_index": 0, "span2_index": 6,
             "span1_text": "Mark", "span2_text": "Himself", "idx": 0, "label": 1},
            'Mark told Pete many lies about himself.\nIn the previous sentence, does the pronoun "himself" refer to '
            "Mark? Yes or No?\n", ["No", "Yes"], 1),
    "wic": ({"word": "bank", "sentence1": "He sat on the bank.", "sentence2": "The bank lent money.", "start1": 14,
             "end1": 18, "start2": 4, "end2": 8, "idx": 0, "label": 0},
            'Does the word "bank" have the same meaning in these two sentences? Yes, No?\nHe sat on the bank.\n'
            "The bank lent money.\n", ["No", "Yes"], 0),
    "multirc": ({"paragraph": "Tom has two dogs.", "question": "How many dogs does Tom have?", "answer": "Three",
                 "idx": {"paragraph": 0, "question": 0, "answer": 0}, "label": 0},
                'Tom has two dogs.\nQuestion: How many dogs does Tom have?\nI found this answer "Three". '
                "Is that correct? Yes or No?\n", ["No", "Yes"], 0),
    "copa": ({"premise": "The man broke his toe.", "choice1": "He dropped a hammer on his foot.",
              "choice2": "I got a hole in my sock.", "question": "cause", "idx": 0, "label": 0},
             "The man broke his toe because", [" he dropped a hammer on his foot.", " I got a hole in my sock."], 0),
    "record": ({"passage": "Obama met Merkel in Berlin.\n@highlight\nTalks went well", "query": "@placeholder praised "
                "the talks.", "entities": ["Obama", "Merkel", "Berlin"], "entity_spans": {"text": ["Obama", "Merkel",
                "Berlin"], "start": [0, 10, 20], "end": [4, 15, 25]}, "answers": ["Merkel"],
                "idx": {"passage": 0, "query": 0}},
               "Obama met Merkel in Berlin.\n- Talks went well\n-",
               [" Obama praised the talks.", " Merkel praised the talks.", " Berlin praised the talks."], 1),
    "squad": ({"id": "1", "title": "France", "context": "Paris is the capital.", "question": " What is the capital? ",
               "answers": {"text": ["Paris", "Paris city"], "answer_start": [0, 0]}},
              "Title: France\nContext: Paris is the capital.\nQuestion: What is the capital?\nAnswer:", None,
              (["Paris", "Paris city"], " Paris\n")),
    "drop": ({"section_id": "s1", "query_id": "q1", "passage": "The Bears scored 3 touchdowns.",
              "question": "How many touchdowns?", "answers_spans": {"spans": ["3"], "types": ["number"]}},
             "Passage: The Bears scored 3 touchdowns.\nQuestion: How many touchdowns?\nAnswer:", None,
             (["3"], " 3\n")),
}
TASKS = sorted(GOLDEN)
TEXT_FIELD = {"sst2": "sentence", "rte": "premise", "cb": "premise", "boolq": "passage", "wsc": "text",
              "wic": "sentence1", "multirc": "paragraph", "copa": "premise", "record": "passage",
              "squad": "context", "drop": "passage"}


def variant(task: str, i: int) -> dict:
    """Training record i: the golden record with a distinct text and a label that cycles."""
    rec = copy.deepcopy(GOLDEN[task][0])
    rec[TEXT_FIELD[task]] = f"Item {i}. " + rec[TEXT_FIELD[task]]
    if "label" in rec:
        rec["label"] = i % len(GOLDEN[task][2])
    if task == "boolq":
        rec["answer"] = i % 2 == 0
    if task == "copa":
        rec["question"] = ("cause", "effect")[i % 2]
    if task == "record":
        rec["answers"] = [rec["entities"][i % 3]]
    return rec


def expected_label(task: str, rec: dict) -> int:
    if task == "boolq":
        return 0 if rec["answer"] else 1
    if task == "record":
        return rec["entities"].index(rec["answers"][0])
    return rec["label"]


def write_jsonl(path: Path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def hub_files(tmp_path: Path, task: str, n_train: int = 12):
    train = [variant(task, i) for i in range(n_train)]
    return (write_jsonl(tmp_path / f"{task}-train.jsonl", train),
            write_jsonl(tmp_path / f"{task}-validation.jsonl", [GOLDEN[task][0]]), train)


def task_cfg(task: str, train_file: str, val_file: str, *extra: str):
    cfg = compose_config(f"task={task}", f"task.data_files.train={train_file}",
                         f"task.data_files.validation={val_file}", "task.num_train=6", "task.num_dev=3", *extra)
    validate(cfg)
    return cfg


@pytest.mark.parametrize("task", TASKS)
def test_golden_prompt_labels_and_split(tmp_path, task):
    train_file, val_file, train_recs = hub_files(tmp_path, task)
    cfg = task_cfg(task, train_file, val_file)
    built = build_task(cfg.task)
    record, prompt, candidates, gold = GOLDEN[task]
    (ex,) = built.test
    assert ex.prompt == prompt
    if candidates is None:
        assert built.type == "generation" and (ex.answers, ex.target) == gold
    else:
        assert built.type == "classification" and ex.candidates == candidates and ex.label == gold
    # MeZO's split: NumPy's seeded permutation of the train split, the last num_dev records are dev
    order = np.random.RandomState(0).permutation(len(train_recs))[:9]
    assert (len(built.train), len(built.dev)) == (6, 3)
    for ex, i in zip(built.train + built.dev, order):
        assert f"Item {i}. " in ex.prompt
        if candidates is not None:
            assert ex.label == expected_label(task, train_recs[i])
    again = build_task(cfg.task)
    assert [e.prompt for e in again.train] == [e.prompt for e in built.train]
    other = build_task(task_cfg(task, train_file, val_file, "task.seed=1").task)
    assert [e.prompt for e in other.train] != [e.prompt for e in built.train]


@pytest.mark.parametrize("task", TASKS)
def test_smoke_run_writes_metric_keys(tmp_path, task):
    train_file, val_file, _ = hub_files(tmp_path, task)
    cfg = task_cfg(task, train_file, val_file, "budget=smoke", "logger.progress=false")
    run = Run(cfg, str(tmp_path / "run"))
    run.setup()
    run.train()
    run.cleanup()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    keys = {"f1", "em"} if task in ("squad", "drop") else {"accuracy", "loss"}
    assert summary["status"] == "completed" and summary["steps"] == 20
    for part in ("dev_initial", "dev", "test"):
        assert set(summary[part]) == keys | ({"objective"} if part != "test" else set())  # dev: the training loss
    assert set(summary["selected"]["test"]) == keys and summary["eval_examples_per_s"] > 0


# ----------------------------------------------------------------- bad input
def build_rte(tmp_path, train_records, val_records=None, *extra):
    train_file = write_jsonl(tmp_path / "train.jsonl", train_records)
    val_file = write_jsonl(tmp_path / "val.jsonl", val_records if val_records is not None else [GOLDEN["rte"][0]])
    return build_task(task_cfg("rte", train_file, val_file, *extra).task)


def one_line_error(fn, *args) -> str:
    with pytest.raises(ZorunError) as err:
        fn(*args)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_field_names_file_and_field(tmp_path):
    records = [variant("rte", i) for i in range(12)]
    for r in records:
        del r["hypothesis"]
    msg = one_line_error(build_rte, tmp_path, records)
    assert str(tmp_path / "train.jsonl") in msg and "no field 'hypothesis'" in msg
    records = [variant("rte", i) for i in range(12)]
    del records[3]["hypothesis"]  # one record lacks it: datasets fills null
    msg = one_line_error(build_rte, tmp_path, records, None, "task.num_dev=6")
    assert "train.jsonl: row 3 has no field 'hypothesis'" in msg


def test_label_out_of_range(tmp_path):
    val = dict(GOLDEN["rte"][0], label=2)
    msg = one_line_error(build_rte, tmp_path, [variant("rte", i) for i in range(12)], [val])
    assert msg.endswith("val.jsonl: row 0: label 2 is out of range: this task's labels are 0..1")


def test_empty_split_and_unreadable_files(tmp_path):
    msg = one_line_error(build_rte, tmp_path, [variant("rte", i) for i in range(12)], [])
    assert msg == f"{tmp_path / 'val.jsonl'}: the validation split is empty (no records)"
    (tmp_path / "broken.jsonl").write_text('{"premise": "x"\n')
    cfg = task_cfg("rte", str(tmp_path / "broken.jsonl"), str(tmp_path / "val.jsonl"))
    assert "broken.jsonl: cannot be read as json" in one_line_error(build_task, cfg.task)
    cfg = task_cfg("rte", str(tmp_path / "absent.jsonl"), str(tmp_path / "val.jsonl"))
    assert "task.data_files.train=" in one_line_error(build_task, cfg.task)
    cfg = task_cfg("rte", str(tmp_path / "train.txt"), str(tmp_path / "val.jsonl"))
    assert "unknown format '.txt'" in one_line_error(build_task, cfg.task)
    cfg = compose_config("task=rte", f"task.data_files.train={tmp_path / 'train.jsonl'}")
    assert "task.data_files.validation is not set" in one_line_error(build_task, cfg.task)


def test_fewer_records_than_requested_takes_all_and_warns(tmp_path, caplog):
    """As MeZO (and CB/COPA with the defaults): the split is used whole; dev keeps its size."""
    caplog.set_level(logging.WARNING)
    built = build_rte(tmp_path, [variant("rte", i) for i in range(5)], None, "task.num_dev=2")
    assert (len(built.train), len(built.dev), len(built.test)) == (3, 2, 1)
    assert "train.jsonl has 5 records, fewer than the 8 requested; using all of them (3 train + 2 dev)" in caplog.text
    assert "val.jsonl has 1 records, fewer than the 1000 requested" in caplog.text


def test_mismatched_type_and_too_many_demos_are_config_errors(tmp_path):
    train_file, val_file, _ = hub_files(tmp_path, "sst2")
    with pytest.raises(ConfigError, match="does not fit task=sst2"):
        build_task(task_cfg("sst2", train_file, val_file, "task.type=generation").task)
    with pytest.raises(ConfigError, match="task.icl_demos=7 is out of range"):
        task_cfg("sst2", train_file, val_file, "task.icl_demos=7", "task.icl_sampling=fixed")


# ----------------------------------------------------------------------- ICL
def test_fixed_icl_prepends_the_first_training_examples_solved(tmp_path):
    train_file, val_file, _ = hub_files(tmp_path, "copa")
    plain = build_task(task_cfg("copa", train_file, val_file).task)
    icl = build_task(task_cfg("copa", train_file, val_file, "task.icl_demos=2", "task.icl_sampling=fixed").task)
    demos = [(ex.prompt + ex.candidates[ex.label]).strip() for ex in plain.train[:2]]
    assert icl.test[0].prompt == demos[0] + SEPARATOR + demos[1] + SEPARATOR + GOLDEN["copa"][1]
    assert icl.test[0].candidates == plain.test[0].candidates
    assert all(d.prompt.startswith(demos[0] + SEPARATOR) for d in icl.dev)
    assert [e.prompt for e in icl.train] == [e.prompt for e in plain.train]  # training never sees demos
    squad_train, squad_val, _ = hub_files(tmp_path, "squad")
    icl = build_task(task_cfg("squad", squad_train, squad_val, "task.icl_demos=1", "task.icl_sampling=fixed").task)
    first = icl.train[0]
    assert icl.test[0].prompt == f"{first.prompt} {first.answers[0]}" + SEPARATOR + GOLDEN["squad"][1]
