"""task=local sizes its splits from the file: a small file is split by fractions (one warning), not refused."""

from __future__ import annotations

import json
import logging

import pytest

from conftest import compose_config, read_summary
from zorun.errors import ZorunError
from zorun.tasks import build_task


def write_lines(path, n: int):
    path.write_text("".join(json.dumps({"prompt": f"example {i} . It was", "candidates": [" great", " terrible"],
                                        "label": i % 2}) + "\n" for i in range(n)))
    return path


def task_cfg(path, *overrides: str):
    return compose_config("task=local", f"task.path={path}", *overrides).task


def sizes(task):
    return len(task.train), len(task.dev), len(task.test)


def test_a_small_file_is_split_by_fractions_with_one_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="zorun.tasks.local"):
        task = build_task(task_cfg(write_lines(tmp_path / "mine.jsonl", 200)))
    assert sizes(task) == (160, 20, 20)
    (warning,) = caplog.records
    assert "holds 200 examples" in warning.getMessage() and "using 20 dev, 20 test and 160 train" in warning.getMessage()
    prompts = [ex.prompt for ex in task.train + task.dev + task.test]
    assert len(set(prompts)) == 200, "no example in two splits"


def test_sizes_that_leave_half_the_file_to_train_on_are_kept(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="zorun.tasks.local"):
        task = build_task(task_cfg(write_lines(tmp_path / "mine.jsonl", 200), "task.num_dev=50", "task.num_test=40"))
    assert sizes(task) == (110, 50, 40) and not caplog.records


def test_a_file_too_small_for_three_splits_is_one_line(tmp_path):
    with pytest.raises(ZorunError, match=r"holds 2 examples; a run needs at least 3"):
        build_task(task_cfg(write_lines(tmp_path / "tiny.jsonl", 2)))


def test_a_200_line_file_trains_through_the_cli(cli, tmp_path):
    data = write_lines(tmp_path / "mine.jsonl", 200)
    proc = cli("task=local", f"task.path={data}", "budget=smoke", "budget.steps=2", "logger=none",
               f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr
    assert read_summary(tmp_path / "run")["status"] == "completed"
