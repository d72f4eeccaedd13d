"""sampler=adalezo through the CLI: the multirun side by side with uniform, its logs, and bad options."""

from __future__ import annotations

import json
import math

import pytest
from conftest import run_cli

from zorun.preflight import preflight
from zorun.config import ConfigError
from zorun.sweep.report import build_report


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_multirun_uniform_and_adalezo_with_mezo_and_zo_adam(tmp_path):
    proc = run_cli("-m", "sampler=uniform,adalezo", "estimator=mezo,zo-adam", "budget=smoke", "task.num_dev=32",
                   "task.num_test=32", "logger.progress=false", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summaries = {d: json.loads((d / "summary.json").read_text()) for d in tmp_path.iterdir()
                 if (d / "summary.json").is_file()}
    jobs = {(s["estimator"], s["sampler"]): d for d, s in summaries.items()}
    assert set(jobs) == {(e, s) for e in ("mezo", "zo-adam") for s in ("uniform", "adalezo")}
    for summary in summaries.values():
        assert summary["status"] == "completed" and summary["steps"] == 20 and summary["forward_passes"] == 40
    params = summaries[jobs["mezo", "uniform"]]["trainable_params"]
    for sampler in ("uniform", "adalezo"):  # Adam's m and v: two fp32 copies, whichever layers are active
        assert summaries[jobs["mezo", sampler]]["state_bytes"] == 0
        assert summaries[jobs["zo-adam", sampler]]["state_bytes"] >= 2 * 4 * params
    assert not (jobs["mezo", "uniform"] / "adalezo.jsonl").exists()
    for estimator in ("mezo", "zo-adam"):
        records = read_jsonl(jobs[estimator, "adalezo"] / "adalezo.jsonl")
        assert [r["step"] for r in records] == list(range(20))
        for r in records:  # tiny model: 4 layers (embeddings, 2 blocks, final norm), k = max(1, ⌊0.2·4⌋) = 1
            assert len(r["probs"]) == len(r["rewards"]) == 4 and math.isclose(sum(r["probs"]), 1.0, rel_tol=1e-4)
            assert sum(r["counts"]) == 1 and r["active"] == sorted(r["active"])
            p = r["probs"][r["active"][0]]
            assert math.isclose(r["weights"][0], min(1 / p, 10.0), rel_tol=1e-4)
    jobs["adalezo"] = jobs["mezo", "adalezo"]
    metrics = [m for m in read_jsonl(jobs["adalezo"] / "metrics.jsonl") if "loss" in m]
    assert all(m["active_layers"] == 1 and 0 < m["active_numel_frac"] < 1 for m in metrics)
    report = build_report(tmp_path, None)  # what zorun-report does: a heat map for each adalezo job
    report.write()
    heat_maps = [p for p in report.plots if p.name.startswith("adalezo_")]
    assert len(heat_maps) == 2 and heat_maps[0].read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("override, message", [
    ("sampler.tau=0", "sampler.tau=0.0 is out of range"),
    ("sampler.k_ratio=1.5", "sampler.k_ratio=1.5 is out of range"),
    ("sampler.gamma=-0.1", "sampler.gamma=-0.1 is out of range"),
    ("sampler.ema_alpha=0", "sampler.ema_alpha=0.0 is out of range"),
    ("sampler.ipw_clip=0", "sampler.ipw_clip=0.0 is out of range"),
    ("sampler.interval=0", "sampler.interval=0 is out of range"),
])
def test_out_of_range_options_are_refused_before_loading(override, message):
    with pytest.raises(ConfigError, match=message):
        preflight(["sampler=adalezo", override], multirun=False)


def test_defaults_compose_and_inf_clip_is_accepted():
    assert preflight(["sampler=adalezo", "sampler.ipw_clip=inf", "sampler.warm_start=true"], multirun=False) == 1
