"""The heat map of layer probabilities that the report draws from adalezo.jsonl."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from zorun.errors import ZorunError
from zorun.estimators.base import StepResult
from zorun.params import ParamSpace
from zorun.samplers.adalezo import (LOG_NAME, AdaLeZOSampler, AdaLeZOSamplerConfig, plot_layer_probabilities,
                                    read_probabilities)


def write_log(out_dir, steps=30, layers=6):
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(layers))
    sampler = AdaLeZOSampler(OmegaConf.structured(AdaLeZOSamplerConfig(k_ratio=0.5)), ParamSpace.from_model(model), 0)
    sampler.open_log(out_dir)
    for t in range(steps):
        plan = sampler.plan(t)
        sampler.observe(plan, StepResult(loss=1.0, grad=float(t % 7) - 3.0, forward_passes=2))
    sampler.close()
    return out_dir / LOG_NAME


def test_plot_writes_a_png(tmp_path):
    log = write_log(tmp_path)
    steps, probs = read_probabilities(log)
    assert steps.tolist() == list(range(30)) and probs.shape == (30, 6)
    png = plot_layer_probabilities(log, tmp_path / "plots" / "adalezo.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_plot_refuses_missing_or_empty_logs(tmp_path):
    with pytest.raises(ZorunError, match="sampler=adalezo"):
        plot_layer_probabilities(tmp_path / "none.jsonl", tmp_path / "x.png")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ZorunError, match="no steps"):
        plot_layer_probabilities(tmp_path / "empty.jsonl", tmp_path / "x.png")
    (tmp_path / "bad.jsonl").write_text('{"step": 0}\n')
    with pytest.raises(ZorunError, match="bad.jsonl:1"):
        plot_layer_probabilities(tmp_path / "bad.jsonl", tmp_path / "x.png")
