"""zorun-metatrain and sampler=pertnn through their command lines: outputs, logs, exact resume, bad options."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from test_resume import assert_same_run, run_here, stop_at

from zorun.preflight import preflight
from zorun.config import ConfigError
from zorun.models import load_model
from zorun.params import ParamSpace
from zorun.errors import ZorunError
from zorun.samplers.pertnn import BlockNets
from zorun.samplers.pertnn_io import locate, read, save

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["task.num_train=32", "task.num_dev=8", "task.num_test=8"]


def read_jsonl(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def metatrain(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "zorun.commands.metatrain", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_metatrain_round_robin_then_the_networks_drive_a_zo_run(tmp_path):
    """Two synthetic variants in the round robin; the written networks load into a mezo run, which logs σ."""
    out = tmp_path / "meta"
    proc = metatrain(*SMALL, "+task@metatrain.tasks.harder=synthetic", "metatrain.tasks.harder.seed=5",
                     "metatrain.tasks.harder.options.filler_words=8", "metatrain.epochs=2",
                     "metatrain.epochs_per_restart=1", "metatrain.log_every=2", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["tasks"] == ["synthetic", "harder"]
    assert summary["steps"] == 2 * 4 * 2 and len(summary["epochs"]) == 2  # epochs x batches of 8 x tasks
    steps = [r for r in read_jsonl(out / "metrics.jsonl") if "meta_loss" in r]
    assert len(steps) == 8 and all(r["lr"] < 1e-5 and r["sigma_min"] > 0 for r in steps)

    run_dir = tmp_path / "zo"
    _, zo = run_here(run_dir, "sampler=pertnn", f"sampler.checkpoint={out / 'pertnn.safetensors'}",
                     "sampler.log_every=5", "budget.steps=20")
    assert zo["status"] == "completed" and zo["sampler"] == "pertnn"
    records = read_jsonl(run_dir / "pertnn.jsonl")
    assert [r["step"] for r in records] == [0, 5, 10, 15] and len(records[0]["blocks"]) == len(records[0]["sigma"])
    logged = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]
    assert all(0 < r["scale_min"] <= r["scale_mean"] <= r["scale_max"] and r["norm_factor"] > 0 for r in logged)


def tiny_space() -> ParamSpace:
    """The trainable blocks of the default model (tiny, seed 0)."""
    cfg = compose_config()
    return ParamSpace.from_model(load_model(cfg.model, 0))


def tiny_networks(path: Path) -> Path:
    space = tiny_space()
    nets = BlockNets(len(space), generator=torch.Generator().manual_seed(0))
    return save(path, nets, [b.name for b in space.blocks], [list(b.tensor.shape) for b in space.blocks],
                base_model="tiny", source="test")


def test_stop_and_resume_with_pertnn_equals_uninterrupted(tmp_path):
    """The sampler's recurrent state (previous L± and σ) round-trips through a checkpoint: bit for bit."""
    ckpt = tiny_networks(tmp_path / "nets.safetensors")
    common = ["sampler=pertnn", f"sampler.checkpoint={ckpt}", "sampler.log_every=1", "estimator=zo-sgd-momentum",
              "budget.steps=12", "budget.checkpoint_every=5"]
    run_here(tmp_path / "whole", *common)
    _, stopped = run_here(tmp_path / "cut", *common, hook=stop_at(7))
    assert stopped["status"] == "stopped" and stopped["steps"] == 7
    _, resumed = run_here(tmp_path / "cut", *common)
    assert resumed["resumed_from"] == 7
    assert_same_run(tmp_path / "whole", tmp_path / "cut")
    assert (tmp_path / "whole" / "pertnn.jsonl").read_text() == (tmp_path / "cut" / "pertnn.jsonl").read_text()


@pytest.mark.parametrize("config, overrides, message", [
    ("config", ["sampler=pertnn", "sampler.checkpoint=null"], "sampler=pertnn needs trained networks"),
    ("config", ["sampler=pertnn", "sampler.embed_tokens=0"], "sampler.embed_tokens=0 is out of range"),
    ("config", ["sampler=pertnn", "sampler.rename=[abc]"], "each rule is 'REGEX=>REPLACEMENT'"),
    ("metatrain", ["estimator=mezo"], "the teacher trajectory is first-order"),
    ("metatrain", ["kernels=triton"], "use kernels=torch or auto"),
    ("metatrain", ["metatrain.eta_meta=0"], "metatrain.eta_meta=0.0 is out of range"),
])
def test_bad_options_are_refused_before_loading(config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        preflight(overrides, multirun=False, config_name=config)


def test_a_missing_checkpoint_is_one_line(tmp_path, compose):
    """Raised as a ZorunError at setup, which the CLI prints as `zorun: error: <line>` with exit 2."""
    from zorun.run import Run

    missing = tmp_path / "none.safetensors"
    cfg = compose("sampler=pertnn", f"sampler.checkpoint={missing}", *SMALL, "logger=none")
    with pytest.raises(ZorunError) as err:
        Run(cfg, str(tmp_path / "run")).setup()
    assert str(err.value) == (f"sampler.checkpoint={missing} does not exist; meta-train networks with zorun-metatrain, "
                              f"import released ones with zorun-pertnn import, or set the path")


def test_a_missing_checkpoint_is_refused_before_the_model_loads(tmp_path):
    with pytest.raises(ZorunError, match=f"sampler.checkpoint={tmp_path}/none.safetensors does not exist"):
        preflight(["sampler=pertnn", f"sampler.checkpoint={tmp_path}/none.safetensors"], multirun=False)


def test_the_default_model_runs_on_the_shipped_networks_unless_the_working_directory_has_its_own(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = locate("pertnn/tiny.safetensors")
    assert shipped == ROOT / "zorun" / "networks" / "tiny.safetensors"
    meta, _ = read(shipped)  # the networks of the documented transfer experiment (docs/pertnn.md)
    assert meta["base_model"] == "tiny" and meta["source"] == "metatrain"
    assert [b["name"] for b in meta["blocks"]] == [b.name for b in tiny_space().blocks]
    assert preflight(["sampler=pertnn"], multirun=False) == 1
    assert locate("pertnn/opt-30b.safetensors") == Path("pertnn/opt-30b.safetensors")  # none shipped: as given
    with pytest.raises(ZorunError, match="sampler.checkpoint=pertnn/opt-30b.safetensors does not exist"):
        preflight(["sampler=pertnn", "model=opt-30b"], multirun=False)
    own = tiny_networks(tmp_path / "pertnn" / "tiny.safetensors")
    assert locate("pertnn/tiny.safetensors") == Path("pertnn/tiny.safetensors") and own.is_file()


@pytest.mark.parametrize("estimator", ["mezo", "zo-sgd-momentum", "zo-sign", "zo-adam", "hizoo", "lozo", "lozo-m"])
def test_pertnn_drives_every_zo_estimator(tmp_path, estimator):
    """pertnn composes with every ZO estimator: a short run completes with the estimator's forward passes."""
    ckpt = tiny_networks(tmp_path / "nets.safetensors")
    run, summary = run_here(tmp_path / "run", "sampler=pertnn", f"sampler.checkpoint={ckpt}",
                            f"estimator={estimator}", "budget.steps=4", "budget.checkpoint_every=0")
    assert summary["status"] == "completed" and summary["steps"] == 4, summary.get("error")
    assert summary["forward_passes"] == 4 * run.stack.estimator.passes_per_step
