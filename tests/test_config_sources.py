"""Validation inside Hydra: the config that actually runs is checked, wherever it came from (a --config-dir, a
--config-name, an +experiment= overlay, a sweeper plugin's values), with the same one-line errors and exit 2."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from zorun.commands import cli as zcli

from conftest import read_summary, run_cli

FAST = ["budget=smoke", "budget.steps=2", "budget.log_every=1", "task.num_train=16", "task.num_dev=8",
        "task.num_test=8", "logger=none", "logger.progress=false"]


@pytest.fixture
def user_dir(tmp_path) -> Path:
    """A user's config directory: a model of their own, an experiment overlay, a primary config with a bad value."""
    conf = tmp_path / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "experiment").mkdir()
    (conf / "model" / "my-model.yaml").write_text(
        "# a smaller tiny model\ndefaults:\n  - tiny\n  - _self_\nname: my-model\n"
        "arch:\n  hidden_size: 32\n  intermediate_size: 64\n")
    (conf / "experiment" / "quick.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /sampler: adalezo\n  - _self_\nseed: 3\n"
        "estimator:\n  lr: 2.0e-4\n")
    (conf / "mine.yaml").write_text("defaults:\n  - config\n  - _self_\nestimator:\n  lr: -5.0\n")
    return conf


def test_a_users_model_and_experiment_from_config_dir_train(user_dir, tmp_path):
    run = tmp_path / "run"
    proc = run_cli("--config-dir", str(user_dir), "model=my-model", "+experiment=quick", *FAST,
                   f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = read_summary(run)
    assert (summary["status"], summary["model"], summary["sampler"], summary["seed"]) == \
        ("completed", "my-model", "adalezo", 3)
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert config["model"]["arch"]["hidden_size"] == 32 and config["estimator"]["lr"] == 2.0e-4


def test_a_users_primary_config_is_validated(user_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        zcli.main(["--config-dir", str(user_dir), "--config-name", "mine", f"hydra.run.dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("zorun: error: estimator.lr=-5.0") and "must be > 0" in err[0]
    assert not (tmp_path / "out").exists()
    # the same file, fixed on the command line and with a model of the same directory, passes the pre-flight
    args = zcli._hydra_argv_parser().parse_args(["--config-dir", str(user_dir), "--config-name", "mine",
                                                 "estimator.lr=1e-3", "model=my-model"])
    checked = zcli.check_command(args.overrides, False, zcli.Source.of(args, zcli._app, "config"))
    assert checked.single.model.name == "my-model" and checked.single.estimator.lr == 1e-3


def test_optuna_sweeper_runs_trials_and_reports_the_best_dev_metric(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "hydra/sweeper=optuna", "estimator.lr=interval(1e-5,1e-3)", "hydra.sweeper.n_trials=2",
                   "hydra.sweeper.direction=maximize", "hydra.sweeper.sampler.seed=0", *FAST,
                   f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if (p / "summary.json").exists())
    assert len(jobs) == 2
    values = [read_summary(j)["selected"]["dev"][read_summary(j)["metric"]] for j in jobs]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(values)
    assert f"Best value: {best['best_value']}" in proc.stdout + proc.stderr


def test_a_sweepers_value_is_checked_when_its_job_starts(tmp_path):
    proc = run_cli("-m", "hydra/sweeper=optuna", "estimator.lr=interval(-1.0,-0.5)", "hydra.sweeper.n_trials=1",
                   *FAST, f"hydra.sweep.dir={tmp_path / 'sweep'}")
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("zorun: error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(errors) == 1 and "estimator.lr=-" in errors[0] and "must be > 0" in errors[0]


def test_a_sweeper_may_not_search_hydra_keys(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        zcli.main(["-m", "hydra/sweeper=optuna", "hydra.job.chdir=choice(true,false)",
                   f"hydra.sweep.dir={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "refusing the search over 'hydra.job.chdir'" in err[0], err


def test_the_job_returns_the_number_a_sweeper_optimises():
    summary = {"metric": "f1", "selected": {"dev": {"f1": 0.5, "objective": 1.25}}, "test": {"f1": 0.25},
               "train_loss": 0.75}
    assert zcli.objective(summary, None) == 0.5
    assert zcli.objective(summary, "selected.dev.objective") == 1.25
    assert zcli.objective(summary, "test.f1") == 0.25 and zcli.objective(summary, "train_loss") == 0.75
    assert math.isnan(zcli.objective({"status": "incompatible", "selected": None}, None))


def test_optimized_metric_must_name_a_number_of_the_summary(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        zcli.main(["optimized_metric=val/acc", f"hydra.run.dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "optimized_metric=val/acc names no number of summary.json" in err
