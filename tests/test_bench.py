"""zorun-bench step: the side-by-side comparison runs and its figures are consistent (no timing asserted)."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config, tiny_llama
from zorun.bench import main
from zorun.bench.rounding import _initial


def test_step_compares_samplers_side_by_side(tmp_path, capsys):
    out = tmp_path / "step.json"
    main(["step", "model=tiny", "model.tokenizer=builtin", "--samplers", "uniform,adalezo", "--batch", "2",
          "--seq-len", "16", "--steps", "3", "--json", str(out)])
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    names = ["zorun mezo/uniform", "zorun mezo/adalezo", "MeZO trainer (torch.normal x4)"]
    assert list(result["figures"]) == names
    for name in names:
        assert name in printed
    uniform, adalezo = result["figures"][names[0]], result["figures"][names[1]]
    assert uniform["elements_frac"] == 1.0
    assert 0 < adalezo["elements_frac"] < 1  # the tiny model: 1 of 4 layers drawn per step
    assert result["perturb_update_vs_first"][names[0]] == 1.0
    assert "perturb+update time" in printed and set(result["speedup"]) == set(names[:2])


def test_unknown_sampler_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["step", "model=tiny", "--samplers", "uniform,nope", "--steps", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("zorun-bench: error:") and "nope" in err and err.count("\n") == 1


def test_rounding_measures_from_the_weights_the_run_started_with(tmp_path):
    """zorun-bench rounding's Δ = θ_end − θ_start: θ_start is the run's own start (here a local pretrained
    folder), not the bench's random-init speed model, which would measure the pretraining instead."""
    pretrained = tiny_llama(seed=3)
    pretrained.save_pretrained(tmp_path / "pretrained")
    cfg = compose_config("model.init=pretrained", f"model.path={tmp_path / 'pretrained'}")
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, tmp_path / "run" / ".hydra" / "config.yaml")
    start = _initial(tmp_path / "run")
    expected = pretrained.state_dict()
    assert set(start) == set(expected)
    for name, value in expected.items():
        assert torch.equal(start[name], value.float()), name
