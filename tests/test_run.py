"""End-to-end runs through the CLI: the output contract, multirun layout, and learning on the default."""

from __future__ import annotations

import json

from conftest import read_summary

SUMMARY_KEYS = {"status", "model", "task", "estimator", "sampler", "seed", "steps", "forward_passes",
                "train_loss", "dev_initial", "dev", "test", "wall_s", "peak_mem_bytes", "time_s"}
PHASES = {"forward", "perturb", "update", "sampler", "eval", "other"}


def test_smoke_run_writes_the_output_contract(cli, tmp_path):
    proc = cli("budget=smoke", "budget.eval_every=10", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    s = read_summary(tmp_path)
    assert SUMMARY_KEYS <= s.keys()
    assert s["status"] == "completed" and "error" not in s
    assert (s["model"], s["task"], s["estimator"], s["sampler"]) == ("tiny", "synthetic", "mezo", "uniform")
    assert s["steps"] == 20 and s["forward_passes"] == 40
    assert set(s["dev_initial"]) == {"accuracy", "loss", "objective"}  # dev carries the training loss (budget.select)
    assert set(s["test"]) == {"accuracy", "loss"}
    assert PHASES <= s["time_s"].keys() and s["time_s"]["forward"] > 0 and s["time_s"]["perturb"] > 0
    assert sum(s["time_s"].values()) <= s["wall_s"] * 1.01
    assert s["peak_mem_bytes"] > 0
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [5, 10, 15, 20]
    for r in steps:
        assert {"step", "loss", "lr", "wall_s", "forward_passes"} <= r.keys()
        assert r["forward_passes"] == 2 * r["step"]
    assert [r["step"] for r in records if "dev" in r] == [10]
    assert (tmp_path / ".hydra" / "config.yaml").is_file()
    assert "zorun · completed" in proc.stdout  # the rich summary table


def test_multirun_gives_one_directory_per_job(cli, tmp_path):
    proc = cli("-m", "sampler=uniform", "estimator=mezo", "budget=smoke", "budget.steps=4",
               "task.num_dev=16", "task.num_test=16", "seed=0,1", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p for p in tmp_path.iterdir() if (p / "summary.json").is_file())
    assert len(jobs) == 2
    seeds = sorted(read_summary(j)["seed"] for j in jobs)
    assert seeds == [0, 1]
    assert all("seed=" in j.name for j in jobs)  # named from the overrides
    assert (tmp_path / "report" / "report.md").is_file()  # the report callback ran at the end


def test_default_run_learns_the_synthetic_task(cli, tmp_path):
    """Plain `zorun`: dev accuracy starts near chance and ends >= 75% (the README's first command)."""
    proc = cli(f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    s = read_summary(tmp_path)
    assert abs(s["dev_initial"]["accuracy"] - 0.5) <= 0.10, s["dev_initial"]
    assert s["dev"]["accuracy"] >= 0.75, s["dev"]
    assert s["train_loss"] < 0.6


def test_time_limit_stops_training_early(cli, tmp_path):
    proc = cli("budget.steps=100000", "budget.time_limit_s=3", "task.num_dev=8", "task.num_test=8",
               f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    s = read_summary(tmp_path)
    assert s["status"] == "completed" and 0 < s["steps"] < 100000
