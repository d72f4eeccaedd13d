"""model.device_map (accelerate) on a machine without GPUs, and the per-device memory in summary.json."""

from __future__ import annotations

import logging

import pytest
import torch
from hydra import compose, initialize_config_dir

from zorun.paths import CONF_DIR
from zorun.preflight import preflight
from zorun.config import ConfigError
from zorun.models import load_model
from zorun.models.placement import dispatch, input_device


def cfg_of(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_device_map_without_gpus_is_one_warning_and_the_cpu_model(caplog):
    assert not torch.cuda.is_available()
    assert preflight(["model.device_map=auto", "model.peft=lora"], multirun=False) == 1
    with caplog.at_level(logging.WARNING, logger="zorun.models.placement"):
        model = load_model(cfg_of("model.device_map=auto").model, seed=0)
    assert [r.getMessage() for r in caplog.records] == [
        "model.device_map=auto: no CUDA device is visible, so the whole model stays on cpu"]
    reference = load_model(cfg_of().model, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters()))


@pytest.mark.parametrize("overrides, message", [
    (["model.device_map=auto", "model.device=cpu"],
     "model.device_map=auto places the model over every visible GPU, so model.device=cpu cannot apply"),
    (["model.device_map=everywhere"], "model.device_map=everywhere is out of range: choose one of auto, balanced"),
])
def test_device_map_conflicts_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        preflight(overrides, multirun=False)


def test_accelerate_dispatch_keeps_the_model_s_numbers():
    """The random-init path (infer_auto_device_map + dispatch_model) on the devices there are: same outputs."""
    model = load_model(cfg_of().model, seed=0)
    ids = torch.randint(4, 600, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        placed = dispatch(model, "sequential", torch.float32)
        torch.testing.assert_close(placed(input_ids=ids).logits, before, rtol=0, atol=0)
    assert input_device(placed) == torch.device("cpu")


def test_summary_reports_step_and_forward_peaks_per_device(tmp_path):
    from zorun.run import Run

    run = Run(cfg_of("budget=smoke", "budget.steps=2", "task.num_train=32", "task.num_dev=0", "task.num_test=0",
                     "logger=none", "budget.checkpoint_every=0"), str(tmp_path))
    run.setup()
    run.train()
    summary = run.cleanup()
    (device, peaks), = summary["memory"].items()
    assert device == "cpu"
    assert 0 < peaks["forward_peak_bytes"] <= peaks["step_peak_bytes"] <= summary["peak_mem_bytes"]
    assert peaks["step_over_forward"] == peaks["step_peak_bytes"] / peaks["forward_peak_bytes"]
    assert summary["world_size"] == 1
