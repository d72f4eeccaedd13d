"""Model loading: a local checkpoint via model.path, random init at a preset's real shape, dtypes."""

from __future__ import annotations

import pytest
import torch

from conftest import read_summary, tiny_llama
from zorun.errors import ZorunError
from zorun.models import load_model, load_tokenizer
from zorun.models.tokenizer import build_tiny_tokenizer


def _preset(preset: str, **over):
    from hydra import compose, initialize_config_dir

    from zorun.commands.cli import CONF_DIR  # registers the schemas

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"model={preset}"] + [f"model.{k}={v}" for k, v in over.items()])
    return cfg.model


def test_model_path_without_a_preset_trains_that_model_named_after_it(cli, tmp_path):
    """The default preset (tiny, random init) yields to model.path: the folder's architecture, its name."""
    ckpt = tmp_path / "my-llama"
    tiny_llama(hidden=32, layers=3, vocab=640).save_pretrained(ckpt)
    build_tiny_tokenizer().save_pretrained(ckpt)
    proc = cli(f"model.path={ckpt}", "budget=smoke", "budget.steps=3", "task.num_dev=8", "task.num_test=8",
               "logger=none", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run,) = (tmp_path / "outputs").glob("*/*_my-llama_synthetic_*")  # Hydra's run directory names the model
    summary = read_summary(run)
    assert summary["status"] == "completed" and summary["model"] == "my-llama"
    numel = sum(p.numel() for p in tiny_llama(hidden=32, layers=3, vocab=640).parameters())
    log = "".join(p.read_text() for p in run.glob("*.log"))
    assert f"{numel / 1e6:.2f}M parameters" in log  # the folder's 3 layers of width 32, not tiny's 2 of 64


@pytest.mark.parametrize("argv,message", [
    (["model.init=random"], "model.init=random builds model.arch with random weights, but model.path="),
    (["model=opt-125m", "model.init=random"], "drop model.init=random to train it, or drop model.path"),
    (["model.path={missing}"], "is not a directory; point it at a saved Hugging Face checkpoint"),
], ids=["tiny", "opt-125m", "missing"])
def test_model_path_conflicts_are_one_line(argv, message, tmp_path, capsys):
    from zorun.commands import cli as zcli

    argv = [a.format(missing=tmp_path / "nope") for a in argv]
    if not any(a.startswith("model.path=") for a in argv):
        argv.append(f"model.path={tmp_path}")
    with pytest.raises(SystemExit) as exc:
        zcli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_model_name_overrides_the_directory_name(tmp_path):
    assert _preset("tiny", path=str(tmp_path / "ckpt")).name == "ckpt"
    assert _preset("tiny", path=str(tmp_path / "ckpt"), name="mine").name == "mine"
    assert _preset("tiny").name == "tiny"


def test_random_init_builds_the_real_shape_offline():
    model = load_model(_preset("opt-125m", init="random"), seed=0)
    n = sum(p.numel() for p in model.parameters())
    assert 125_000_000 < n < 125_500_000  # OPT-125m has 125.2M parameters
    assert not model.training


def test_random_init_is_seeded():
    a = load_model(_preset("tiny"), seed=3).state_dict()
    b = load_model(_preset("tiny"), seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bfloat16_model_trains_through_the_reference_kernels():
    from zorun import kernels
    from zorun.params import ParamSpace
    from zorun.plan import Plan

    model = load_model(_preset("tiny", dtype="bfloat16"), seed=0)
    space = ParamSpace.from_model(model)
    assert all(b.tensor.dtype == torch.bfloat16 for b in space.blocks)
    before = space.snapshot()
    kernels.update_(space, Plan(seed=1, blocks=space.all_blocks()), restore=0.0, coef=0.1)
    assert any(not torch.equal(a, b.tensor) for a, b in zip(before, space.blocks))


def test_missing_local_path_is_one_clear_line(tmp_path):
    cfg = _preset("opt-125m", path=str(tmp_path / "nope"))
    with pytest.raises(ZorunError, match="model.path=.* is not a directory"):
        load_model(cfg, seed=0)


def test_random_preset_without_hub_tokenizer_falls_back_to_builtin(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    tok = load_tokenizer(_preset("opt-125m", init="random"))
    assert tok.get_vocab() == build_tiny_tokenizer().get_vocab()
    assert "built-in tokenizer" in caplog.text
