"""zorun-report on a constructed sweep directory: dev selection, mean ± std (n), best marks, failures, files, plots,
and directories that hold more than one sweep."""

from __future__ import annotations

import csv
import functools
import json
import statistics
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from zorun.paths import CONF_DIR
from zorun.commands.report import main
from zorun.sweep.report import build_report

# (sampler, lr, seed) -> (dev accuracy, test accuracy). For mezo, lr 1e-3 wins on dev
# although lr 1e-4 is better on test: the report must select on dev.
RESULTS = {
    ("uniform", 1e-3, 0): (0.80, 0.70), ("uniform", 1e-3, 1): (0.78, 0.74),
    ("uniform", 1e-4, 0): (0.60, 0.90), ("uniform", 1e-4, 1): (0.62, 0.92),
    ("adalezo", 1e-3, 0): (0.70, 0.76), ("adalezo", 1e-3, 1): (0.72, 0.80),
}


@functools.lru_cache(maxsize=1)
def base_config():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config")


def make_job(root: Path, name: str, overrides, summary=None, sampler="uniform", metrics=(), extra=None):
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    cfg = base_config().copy()
    for override in overrides:
        key, value = override.lstrip("+").split("=")
        if key.split(".")[0] not in ("sampler", "sweep"):
            OmegaConf.update(cfg, key, yaml.safe_load(value))
    cfg.sampler.name = sampler  # the report reads names only; adalezo's config lands on another branch
    OmegaConf.save(cfg, job / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), job / ".hydra" / "overrides.yaml")
    if summary is not None:
        (job / "summary.json").write_text(json.dumps(summary))
    (job / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    for file, text in (extra or {}).items():
        (job / file).write_text(text)
    return job


def summary_for(dev, test, seed, sampler, status="completed", error=None):
    out = {"status": status, "model": "tiny", "task": "synthetic", "estimator": "mezo", "sampler": sampler,
           "seed": seed, "steps": 10, "dev": {"accuracy": dev, "loss": 0.5}, "test": {"accuracy": test},
           "time_s": {"setup": 1.0, "forward": 4.0 if sampler == "uniform" else 3.0, "perturb": 2.0,
                      "update": 1.0, "sampler": 0.1, "eval": 1.5, "other": 0.2}}
    if error:
        out["error"] = error
    return out


ADALEZO_LOG = "".join(json.dumps({"step": s, "probs": [0.5 - 0.02 * s, 0.5 + 0.02 * s]}) + "\n" for s in range(10))


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    for (sampler, lr, seed), (dev, test) in RESULTS.items():
        curve = [{"step": s, "loss": 0.7 - 0.01 * s * (1 + seed), "wall_s": 0.5 * s, "lr": lr} for s in range(1, 11)]
        make_job(root, f"estimator.lr={lr},sampler={sampler},seed={seed}",
                 [f"estimator.lr={lr}", f"sampler={sampler}", f"seed={seed}", "+sweep=smoke"],
                 summary_for(dev, test, seed, sampler), sampler=sampler, metrics=curve,
                 extra={"adalezo.jsonl": ADALEZO_LOG} if sampler == "adalezo" else None)
    make_job(root, "estimator.lr=10.0,seed=0", ["estimator.lr=10.0", "seed=0"],
             summary_for(0.5, 0.5, 0, "uniform", status="diverged", error="non-finite loss at step 3; lower lr"))
    make_job(root, "estimator.lr=5.0,seed=0", ["estimator.lr=5.0", "seed=0"])  # killed: no summary.json
    make_job(root, "budget.steps=0,seed=0", ["budget.steps=0", "seed=0"], summary_for(0.55, 0.52, 0, "uniform"))
    return root


def test_cells_are_dev_selected_test_mean_and_std_with_best_marked(sweep):
    report = build_report(sweep)
    assert report.metric == "accuracy"
    assert report.methods == ["zero-shot", "mezo", "mezo+adalezo"]
    row = report.cells[("tiny", "synthetic")]
    assert row["mezo"].mean == pytest.approx(statistics.fmean([0.70, 0.74]))  # lr 1e-3: better dev, worse test
    assert row["mezo"].std == pytest.approx(statistics.stdev([0.70, 0.74]))
    assert row["mezo"].label == "estimator.lr=0.001 sampler=uniform"
    assert row["mezo+adalezo"].mean == pytest.approx(0.78) and row["mezo+adalezo"].best
    assert row["zero-shot"].n == 1 and row["zero-shot"].std == 0.0
    assert not row["mezo"].best and not row["zero-shot"].best
    assert {job.dir.name: job.status for job in report.failed} == {
        "estimator.lr=10.0,seed=0": "diverged", "estimator.lr=5.0,seed=0": "no summary.json"}


def test_cli_prints_the_table_and_writes_files_plots_and_failures(sweep, monkeypatch, capsys):
    import matplotlib.image

    monkeypatch.setenv("COLUMNS", "160")
    main([str(sweep)])  # zorun-report SWEEP_DIR
    printed = capsys.readouterr().out
    assert "78.0 ± 2.8 (2) *" in printed and "diverged" in printed
    out = sweep / "report"
    md = (out / "report.md").read_text()
    assert "| model | task | zero-shot | mezo | mezo+adalezo |" in md
    assert "| tiny | synthetic | 52.0 | 72.0 ± 2.8 (2) | 78.0 ± 2.8 (2) **\\*** |" in md
    assert "- `estimator.lr=10.0,seed=0`: diverged: non-finite loss at step 3; lower lr" in md
    assert "- `estimator.lr=5.0,seed=0`: no summary.json: the job was killed or is still running" in md, md
    rows = {r["method"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert float(rows["mezo+adalezo"]["test_accuracy_mean"]) == pytest.approx(0.78)
    assert rows["mezo+adalezo"]["best"] == "True" and rows["mezo"]["seeds"] == "2"
    jobs = list(csv.DictReader((out / "jobs.csv").open()))
    assert len(jobs) == 9 and sum(j["status"] == "completed" for j in jobs) == 7
    for name in ("loss_tiny_synthetic.png", "time_breakdown.png"):
        image = matplotlib.image.imread(out / name)
        assert image.shape[0] > 200 and image[..., :3].std() > 0.05, name
    assert sorted(p.name for p in out.glob("adalezo_*.png")) == [
        "adalezo_estimator.lr=0.001,sampler=adalezo,seed=0.png", "adalezo_estimator.lr=0.001,sampler=adalezo,seed=1.png"]
    assert (out / "report.html").stat().st_size > 1_000_000  # plotly.js inlined: opens without a network


def test_incompatible_jobs_are_na_cells_not_failures(sweep, capsys, monkeypatch):
    reason = "sampler=ldsd needs an estimator that probes along the kernels' Gaussian directions"
    for seed in (0, 1):
        make_job(sweep, f"estimator=hizoo,sampler=ldsd,seed={seed}", ["estimator.name=hizoo", f"seed={seed}"],
                 {"status": "incompatible", "error": reason, "seed": seed}, sampler="ldsd")
    report = build_report(sweep)
    assert "hizoo+ldsd" in report.methods and "hizoo+ldsd" not in report.cells[("tiny", "synthetic")]
    assert all(job.status != "incompatible" for job in report.failed) and len(report.failed) == 2
    md = report.markdown()
    row = next(line for line in md.splitlines() if line.startswith("| tiny |"))
    header = next(line for line in md.splitlines() if line.startswith("| model |"))
    assert dict(zip(header.split(" | "), row.split(" | ")))["hizoo+ldsd"] == "n/a"
    assert f"## Not run: incompatible combinations (n/a)\n\n- hizoo+ldsd: {reason}\n" in md
    monkeypatch.setenv("COLUMNS", "200")
    report.print()
    assert f"n/a hizoo+ldsd: {reason}" in capsys.readouterr().out


def test_grids_too_wide_to_read_list_a_row_per_method(sweep, capsys, monkeypatch):
    report = build_report(sweep)
    monkeypatch.setattr("zorun.sweep.report.MARKDOWN_METHODS", 2)  # 3 methods: report.md transposes
    table = [line for line in report.markdown().splitlines() if line.startswith("|")]
    assert table == ["| method | tiny / synthetic |", "|---|---|", "| zero-shot | 52.0 |",
                     "| mezo | 72.0 ± 2.8 (2) |", "| mezo+adalezo | 78.0 ± 2.8 (2) **\\*** |"]
    for columns, first_header in (("200", "model"), ("40", "method")):  # the terminal decides for the rich table
        monkeypatch.setenv("COLUMNS", columns)
        report.print()
        printed = capsys.readouterr().out
        header = next(line for line in printed.splitlines() if first_header in line)
        assert header.split()[1] == first_header, printed


@pytest.mark.parametrize("make", [lambda p: p / "nope", lambda p: p], ids=["missing", "empty"])
def test_bad_directory_is_one_line_and_exit_2(tmp_path, capsys, make):
    with pytest.raises(SystemExit) as exit_info:
        main([str(make(tmp_path))])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("zorun-report: error:") and err.count("\n") == 1


def dev_curve(accuracies, seconds_per_eval, every=5):
    """Train-loss and dev records as a run writes them: dev every `every` steps, train_s growing linearly."""
    records = []
    for i, acc in enumerate(accuracies, start=1):
        step, train_s = every * i, seconds_per_eval * i
        records.append({"step": step, "loss": 1.0 - acc, "lr": 1e-3, "wall_s": train_s + 3.0, "train_s": train_s})
        records.append({"step": step, "dev": {"accuracy": acc}, "wall_s": train_s + 3.5, "train_s": train_s})
    return records


def test_time_to_target_steps_seconds_and_speedup_over_the_base_estimator(tmp_path, capsys):
    root = tmp_path / "speedup"
    # uniform reaches 0.9 at the 3rd and 4th eval (2 s per eval); adalezo at the 2nd and 4th (1 s per eval)
    curves = {("uniform", 0): [0.5, 0.7, 0.9, 0.95], ("uniform", 1): [0.5, 0.6, 0.8, 0.92],
              ("adalezo", 0): [0.6, 0.91, 0.93, 0.95], ("adalezo", 1): [0.5, 0.7, 0.85, 0.9]}
    for (sampler, seed), accs in curves.items():
        make_job(root, f"sampler={sampler},seed={seed}", [f"sampler={sampler}", f"seed={seed}"],
                 {**summary_for(accs[-1], accs[-1], seed, sampler), "train_loss": 0.2 + 0.1 * seed},
                 sampler=sampler, metrics=dev_curve(accs, 2.0 if sampler == "uniform" else 1.0))
    make_job(root, "estimator.lr=1e-6,seed=0", ["estimator.lr=1e-6", "seed=0"],
             summary_for(0.5, 0.5, 0, "uniform"), metrics=dev_curve([0.5, 0.5], 2.0))  # never reaches it

    main([str(root), "--target", "accuracy=0.9"])
    printed = capsys.readouterr().out
    assert "time to target: dev accuracy >= 0.9" in printed
    rows = {(r["method"], r["setting"]): r for r in csv.DictReader((root / "report" / "time_to_target.csv").open())}
    uniform, adalezo = rows[("mezo", "sampler=uniform")], rows[("mezo+adalezo", "sampler=adalezo")]
    assert uniform["reached"] == "2/2" and uniform["steps"] == "18 ± 4"  # steps 15 and 20
    assert uniform["train_s"] == "7.0 ± 1.4" and uniform["final_train_loss"] == "0.2500 ± 0.0707"
    assert adalezo["steps"] == "15 ± 7" and adalezo["train_s"] == "3.0 ± 1.4"  # steps 10 and 20; 2 s and 4 s
    assert adalezo["speedup"] == "2.33x" and uniform["speedup"] == "–"
    slow = rows[("mezo", "estimator.lr=1e-6")]
    assert slow["reached"] == "0/1" and slow["steps"] == "–"
    assert "## Time to target: dev accuracy >= 0.9" in (root / "report" / "report.md").read_text()

    from zorun.sweep.report import build_report as build
    from zorun.sweep.time_to_target import Target
    loss_rows = build(root, target=Target.parse("train_loss=0.085")).target_rows  # loss = 1 − accuracy here
    assert {(r.method, r.reached) for r in loss_rows if r.setting.startswith("sampler")} == {
        ("mezo", 2), ("mezo+adalezo", 1)}


def test_speedup_compares_a_sampler_with_the_base_run_of_the_same_setting(tmp_path):
    """An lr grid: each adalezo setting is measured against uniform at the same lr, not any uniform row."""
    from zorun.sweep.time_to_target import Target

    root = tmp_path / "grid"
    seconds = {("uniform", 1e-3): 2.0, ("uniform", 1e-4): 8.0, ("adalezo", 1e-3): 1.0, ("adalezo", 1e-4): 2.0}
    for (sampler, lr), per_eval in seconds.items():
        overrides = [f"estimator.lr={lr}", f"sampler={sampler}", "seed=0"]
        if sampler == "adalezo":
            overrides.append("sampler.k_ratio=0.5")  # the sampler's own options are not part of the match
        make_job(root, f"lr={lr},sampler={sampler}", overrides, {**summary_for(0.9, 0.9, 0, sampler), "train_loss": 0.1},
                 sampler=sampler, metrics=dev_curve([0.5, 0.95], per_eval))
    rows = {r.setting: r for r in build_report(root, target=Target.parse("accuracy=0.9")).target_rows}
    assert rows["estimator.lr=0.001 sampler=adalezo sampler.k_ratio=0.5"].speedup == pytest.approx(2.0)  # 4 s / 2 s
    assert rows["estimator.lr=0.0001 sampler=adalezo sampler.k_ratio=0.5"].speedup == pytest.approx(4.0)  # 16 / 4


@pytest.mark.parametrize("bad", ["accuracy", "accuracy=high", "=0.9", "loss=nan"])
def test_bad_target_is_one_line_and_exit_2(sweep, capsys, bad):
    with pytest.raises(SystemExit) as exit_info:
        main([str(sweep), "--target", bad])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("zorun-report: error: --target") and err.count("\n") == 1


def test_a_one_seed_cell_shows_the_mean_alone(sweep):
    cell = build_report(sweep).cells[("tiny", "synthetic")]["zero-shot"]
    assert cell.n == 1 and cell.text() == "52.0" and "±" not in cell.text()


def record_launch(job: Path, grid):
    (job / "sweep.json").write_text(json.dumps({"grid": grid}))


def test_a_directory_with_two_sweeps_is_split_and_merge_joins_them(sweep, capsys):
    """Another grid launched into the same directory: a report per sweep, each with its own jobs and methods."""
    first = ["estimator.lr=0.001,0.0001", "sampler=uniform,adalezo", "seed=0,1"]
    for job in sweep.iterdir():
        record_launch(job, first)
    for seed in (0, 1):
        job = make_job(sweep, f"estimator=zo-adam,seed={seed}", ["estimator.name=zo-adam", f"seed={seed}"],
                       {**summary_for(0.6, 0.6, seed, "uniform"), "estimator": "zo-adam"})
        record_launch(job, ["estimator=zo-adam", "seed=0,1"])
    main([str(sweep)])
    printed = capsys.readouterr().out
    assert "holds 2 sweeps" in printed and "--merge" in printed
    mine, other = (sweep / "report" / name for name in ("estimator.lr=0.001,0.0001_sampler=uniform,adalezo_seed=0,1",
                                                         "estimator=zo-adam_seed=0,1"))
    assert "zo-adam" not in (mine / "report.md").read_text() and "mezo+adalezo" in (mine / "report.md").read_text()
    assert "| tiny | synthetic | 60.0 ± 0.0 (2) |" in (other / "report.md").read_text()
    assert not (sweep / "report" / "report.md").exists()
    main([str(sweep), "--merge"])
    merged = (sweep / "report" / "report.md").read_text()
    assert "zo-adam" in merged and "mezo+adalezo" in merged


def test_two_runs_of_one_configuration_are_refused(sweep, capsys):
    """Two launches that collided in one directory: a seed would count twice."""
    for name in ("0_seed=0", "1_seed=0"):
        make_job(sweep, name, ["seed=0"], {**summary_for(0.5, 0.5, 0, "uniform"), "config_hash": "abc"})
    with pytest.raises(SystemExit) as exit_info:
        main([str(sweep)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("zorun-report: error:") and "0_seed=0 and 1_seed=0" in err and err.count("\n") == 1


@pytest.mark.slow
def test_two_multiruns_started_together_get_their_own_directories(tmp_path):
    """Ad-hoc sweep directories carry a per-launch suffix: launched in the same second, they still differ, and each
    report counts its own seeds only."""
    import os
    import subprocess

    from conftest import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    args = [sys.executable, "-m", "zorun", "-m", "seed=0,1", "budget=smoke", "budget.steps=2", "task.num_train=16",
            "logger=none", "hydra.sweep.dir=outputs/multirun/same-second-${zorun.launch_id:}"]
    launches = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True) for _ in range(2)]
    assert all(p.wait(timeout=900) == 0 for p in launches), [p.stderr.read() for p in launches]
    sweeps = sorted((tmp_path / "outputs" / "multirun").iterdir())
    assert len(sweeps) == 2
    for sweep_dir in sweeps:
        assert len(list(sweep_dir.glob("[01]_*"))) == 2
        assert "± " in (sweep_dir / "report" / "report.md").read_text() and " (2) |" in (
            sweep_dir / "report" / "report.md").read_text()


def test_the_default_sweep_directory_is_unique_per_launch():
    """Two compositions in the same second (the time is frozen by the cache, the suffix is not)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        dirs = [str(compose("config", overrides=["hydra.sweep.dir=outputs/multirun/12-00-00-${zorun.launch_id:}"],
                            return_hydra_config=True).hydra.sweep.dir) for _ in range(2)]
        default = str(compose("config", return_hydra_config=True).hydra.sweep.dir)
    assert dirs[0] != dirs[1] and all(d.startswith("outputs/multirun/12-00-00-") for d in dirs)
    assert default.split("/")[-1].count("-") == 3  # TIME-suffix: HH-MM-SS-xxxxxx
