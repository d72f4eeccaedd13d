"""Evaluation inside a run: model selection on dev, zero-shot / ICL runs, and the offline hub error (CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets

from conftest import compose_config
from zorun.run import Run

ROOT = Path(__file__).resolve().parents[1]


def make_run(tmp_path, *overrides) -> Run:
    """A set-up Run, on the synthetic task unless the overrides choose another."""
    cfg = compose_config("task.num_train=32", "task.num_dev=8", "task.num_test=8", "budget=smoke",
                         "logger.progress=false", *overrides)
    run = Run(cfg, str(tmp_path))
    run.setup()
    return run


def scripted_evaluations(run: Run, dev_accuracies):
    """Replace evaluate with scripted dev results; record every call as (split, step)."""
    calls, devs = [], iter(dev_accuracies)

    def evaluate(split):
        calls.append((split, run.step))
        return {"accuracy": next(devs)} if split == "dev" else {"accuracy": run.step / 100}

    run.evaluate = evaluate
    return calls


def test_model_selection_uses_dev_and_evaluates_test_at_the_selected_step(tmp_path):
    run = make_run(tmp_path, "budget.steps=6", "budget.eval_every=2", "budget.select=dev_metric")
    calls = scripted_evaluations(run, [0.9, 0.7, 0.6, 0.7])  # before training (not a candidate), 2, 4, end
    run.train()
    assert calls == [("dev", 0), ("dev", 2), ("test", 2), ("dev", 4), ("dev", 6), ("test", 6)]
    assert run.selected == {"by": "dev_metric", "step": 2, "dev": {"accuracy": 0.7},
                            "test": {"accuracy": 0.02}}  # the tie keeps step 2
    summary = run.cleanup()
    assert summary["test"] == {"accuracy": 0.06} and summary["selected"]["step"] == 2
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["test"] for r in records if "test" in r] == [{"accuracy": 0.02}]


def test_zero_steps_evaluates_dev_and_test_once(tmp_path):
    run = make_run(tmp_path, "budget.steps=0", "budget.select=dev_metric")
    calls = scripted_evaluations(run, [0.5])
    run.train()
    assert calls == [("dev", 0), ("test", 0)]
    summary = run.cleanup()
    assert summary["dev"] == summary["dev_initial"] == {"accuracy": 0.5}
    assert summary["selected"] == {"by": "dev_metric", "step": 0, "dev": {"accuracy": 0.5}, "test": {"accuracy": 0.0}}
    assert summary["steps"] == summary["forward_passes"] == 0


def test_icl_zero_shot_run_from_local_files(tmp_path):
    """MeZO's ICL row on local copies (jsonl train, parquet validation): budget.steps=0 with demonstrations."""
    rows = [{"sentence": f"{w} film number {i}", "label": int(w == "great"), "idx": i}
            for i, w in enumerate(["great", "awful"] * 8)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:12]))
    datasets.Dataset.from_list(rows[12:]).to_parquet(str(tmp_path / "val.parquet"))
    run = make_run(tmp_path / "run", "task=sst2", f"task.data_files.train={tmp_path / 'train.jsonl'}",
                        f"task.data_files.validation={tmp_path / 'val.parquet'}", "task.num_train=8",
                        "task.num_dev=4", "task.icl_demos=4", "budget.steps=0")
    assert run.task.test[0].prompt.count("It was") == 5 and len(run.task.test) == 4
    run.train()
    summary = run.cleanup()
    assert summary["status"] == "completed" and summary["steps"] == 0
    assert set(summary["test"]) == {"accuracy", "loss"} and summary["dev"] == summary["dev_initial"]
    assert summary["selected"]["step"] == 0 and summary["selected"]["test"] == summary["test"]
    assert summary["eval_examples_per_s"] > 0


def test_offline_without_cache_fails_with_one_line(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    done = subprocess.run([sys.executable, "-m", "zorun", "task=sst2", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    errors = [line for line in done.stderr.splitlines() if line.startswith("zorun: error:")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr
    assert errors[0].startswith("zorun: error: cannot load dataset nyu-mll/glue (sst2) for task=sst2")
    assert "task.data_files.train=FILE task.data_files.validation=FILE" in errors[0]
    assert "Traceback" not in done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] in errors[0]
