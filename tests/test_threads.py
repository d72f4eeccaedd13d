"""The CPU thread policy: one thread for a small model unless OMP_NUM_THREADS says otherwise, torch's default for a
large one, and a run logs which it took."""

from __future__ import annotations

import logging

import pytest
import torch

from zorun.threads import SMALL_MODEL, apply, policy

CPU = torch.device("cpu")


@pytest.mark.parametrize("num_params, env, expected", [
    (130_000, {}, 1),                                  # tiny: one thread
    (130_000, {"OMP_NUM_THREADS": "2"}, None),         # the user's setting stands
    (130_000, {"OMP_NUM_THREADS": " "}, 1),            # blank is unset
    (SMALL_MODEL, {}, None),                           # opt-125m and up: torch's default
])
def test_policy(num_params, env, expected):
    assert policy(CPU, num_params, env)[0] == expected


def test_a_gpu_run_leaves_cpu_threads_alone():
    assert policy(torch.device("cuda", 0), 130_000, {}) == (None, "cuda run")


def test_a_tiny_run_trains_on_one_thread_and_logs_it(tmp_path, monkeypatch, caplog):
    from hydra import compose, initialize_config_dir

    from zorun.paths import CONF_DIR
    from zorun.stack import Stack

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=["logger=none", "task.num_train=8", "task.num_dev=4", "task.num_test=4"])
        with caplog.at_level(logging.INFO, logger="zorun.stack"):
            Stack.build(cfg)
        assert torch.get_num_threads() == 1
        assert "threads=1 (a model under 10M parameters on CPU; OMP_NUM_THREADS=N to change)" in caplog.text
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        torch.set_num_threads(2)
        assert apply(CPU, 130_000) == "threads=2 (OMP_NUM_THREADS=2)" and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
