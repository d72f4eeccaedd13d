"""Sweep files compose and match their headers; job directories; the smoke grid end to end with resume."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from zorun.paths import CONF_DIR
from zorun.preflight import job_overrides, preflight
from zorun.config import ConfigError
from zorun.identity import safe_dirname
from zorun.sweep.multirun import sweeps_dir
from zorun.samplers.pertnn_io import PertNNCheckpointError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(sweeps_dir().glob("*.yaml"))


def header(path: Path, field: str) -> str:
    match = re.search(rf"^# {field}: (.*)$", path.read_text(), re.MULTILINE)
    assert match, f"{path.name} has no '# {field}:' header line"
    return match.group(1)


def header_jobs(path: Path) -> int:
    return int(re.match(r"\d+", header(path, "Jobs")).group())


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_sweep_file_has_its_header(path):
    text = path.read_text()
    assert text.startswith("# @package _global_\n")
    assert header(path, "Launch").startswith(f"zorun -m +sweep={path.stem}")
    header(path, "Source")
    header_jobs(path)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_sweep_composes_every_job_and_counts_them(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths (pertnn/<model>.safetensors, outputs/) resolve here
    if path.stem == "pertnn":  # the paper's models have no shipped networks: refused in one line until given
        with pytest.raises(PertNNCheckpointError, match=r"sampler.checkpoint=pertnn/\S+.safetensors does not exist"):
            preflight([f"+sweep={path.stem}"], multirun=True)
        for model in (REPO / "conf" / "model").glob("*.yaml"):
            (tmp_path / "pertnn").mkdir(exist_ok=True)
            (tmp_path / "pertnn" / f"{model.stem}.safetensors").touch()
    assert preflight([f"+sweep={path.stem}"], multirun=True) == header_jobs(path)


def test_incompatible_pairs_refuse_a_grid_unless_skipped(capsys):
    grid = ["sampler=uniform,ldsd", "estimator=mezo,hizoo", "budget=smoke"]
    with pytest.raises(ConfigError, match="sampler=ldsd needs an estimator that probes along"):
        preflight(grid, multirun=True)
    assert preflight(grid + ["skip_incompatible=true"], multirun=True) == 4
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("zorun: 1 of 4 jobs not run (ldsd x hizoo): sampler=ldsd needs an estimator")
    with pytest.raises(ConfigError, match="every job of the grid is incompatible"):
        preflight(["sampler=ldsd", "estimator=hizoo,lozo", "skip_incompatible=true"], multirun=True)
    with pytest.raises(ConfigError, match="sampler=ldsd needs"):  # a single run is never skipped
        preflight(["sampler=ldsd", "estimator=hizoo", "skip_incompatible=true"], multirun=False)


@pytest.mark.parametrize("terminal", [False, True])
def test_the_preflight_of_a_grid_shows_its_progress_on_a_terminal(terminal, monkeypatch, capsys):
    """Composing every job of a large grid takes minutes under load, before Hydra prints anything: a bar of jobs
    checked on a terminal (rich's TTY_COMPATIBLE stands in for one), erased when done; nothing in a log."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1" if terminal else "0")
    assert preflight(["sampler=uniform,adalezo", "seed=0,1", "budget=smoke"], True) == 4
    err = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", capsys.readouterr().err)
    if terminal:
        assert "zorun: pre-flight" in err and "4/4 jobs checked" in err and "ETA" in err
    else:
        assert err == ""


def test_unknown_sweep_is_one_line_listing_the_sweeps():
    result = subprocess.run([sys.executable, "-m", "zorun", "-m", "+sweep=nope"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 2
    shipped = ", ".join(sorted(p.stem for p in (REPO / "sweeps").glob("*.yaml")))
    assert result.stderr.strip() == f"zorun: error: unknown sweep 'nope': choose +sweep=<one of: {shipped}>"


def test_adhoc_grid_with_sweeper_params_and_sweep_file_expand_alike():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        jobs = job_overrides(["+sweep=smoke", "seed=5,6,7"], True,
                             lambda o, return_hydra_config=False: compose("config", overrides=list(o),
                                                                          return_hydra_config=return_hydra_config))
    assert len(jobs) == 4 * 7 * 3  # samplers x estimators from the file; the command line wins over its seed list, as in Hydra


def test_submitit_launcher_composes():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["+sweep=smoke", "hydra/launcher=submitit_slurm",
                                           "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=1"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert cfg.hydra.launcher.partition == "gpu"
    assert cfg.hydra.sweep.dir == "outputs/multirun/smoke"


@pytest.mark.parametrize("text, expected", [
    ("estimator.lr=1e-06,seed=0,task=sst2", "estimator.lr=1e-06,seed=0,task=sst2"),
    ("model.path=/ckpt/opt 13b,seed=0", "model.path=_ckpt_opt_13b,seed=0"),
    ("", "default"),
])
def test_job_dirnames_are_readable_and_path_safe(text, expected):
    assert safe_dirname(text) == expected


def test_long_job_dirnames_are_bounded_and_distinct():
    a, b = safe_dirname("x=" + "a" * 300), safe_dirname("x=" + "a" * 299 + "b")
    assert len(a.encode()) <= 200 and len(b.encode()) <= 200 and a != b


# ----------------------------------------------------------------- end to end
def wandb_run_records(path: Path):
    """The RunRecord of an offline W&B run, read from its .wandb file (LevelDB log format,
    32 KiB blocks, 7-byte record headers) with W&B's own protobuf classes."""
    from wandb.proto import wandb_internal_pb2

    data, pos, buf = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        length, kind = struct.unpack("<HB", data[pos + 4: pos + 7])
        buf += data[pos + 7: pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            buf = b""
            if record.WhichOneof("record_type") == "run":
                yield record.run


def run_zorun(args, tmp_path, cwd=REPO):
    env = dict(os.environ, WANDB_MODE="offline", WANDB_DIR=str(tmp_path / "wandb-home"),
               WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"), WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"))
    return subprocess.run([sys.executable, "-m", "zorun", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_smoke_grid_runs_ldsd_and_pertnn_and_records_incompatible_pairs(tmp_path):
    """The smoke grid's other two samplers: pertnn on the shipped tiny networks (run outside the
    repository), and ldsd x hizoo recorded as n/a by skip_incompatible instead of refusing the grid."""
    sweep = tmp_path / "smoke"
    args = ["-m", "+sweep=smoke", f"hydra.sweep.dir={sweep}", "budget.steps=2", "logger=none",
            "sampler=ldsd,pertnn", "estimator=mezo,hizoo", "seed=0"]
    result = run_zorun(args, tmp_path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "zorun: 1 of 4 jobs not run (ldsd x hizoo): sampler=ldsd needs" in result.stderr
    status = {p.parent.name: json.loads(p.read_text())["status"] for p in sweep.glob("*/summary.json")}
    assert status == {"budget.steps=2,estimator=mezo,sampler=ldsd,seed=0": "completed",
                      "budget.steps=2,estimator=hizoo,sampler=ldsd,seed=0": "incompatible",
                      "budget.steps=2,estimator=mezo,sampler=pertnn,seed=0": "completed",
                      "budget.steps=2,estimator=hizoo,sampler=pertnn,seed=0": "completed"}
    log = (sweep / "budget.steps=2,estimator=mezo,sampler=pertnn,seed=0" / "cli.log").read_text()
    assert f"pertnn: 20 networks from {REPO / 'zorun' / 'networks' / 'tiny.safetensors'}" in log
    md = (sweep / "report" / "report.md").read_text()
    header, _, row = [line for line in md.splitlines() if line.startswith("|")]
    cells = dict(zip(header.split(" | "), row.split(" | ")))
    assert cells["hizoo+ldsd"] == "n/a" and all(cells[m][0].isdigit() for m in ("mezo+ldsd", "hizoo+pertnn"))
    assert "## Not run: incompatible combinations (n/a)" in md and "Failed jobs" not in md


@pytest.mark.slow
def test_smoke_grid_end_to_end_with_wandb_offline_report_and_resume(tmp_path):
    import matplotlib.image

    sweep = tmp_path / "smoke"
    # a two-job slice of the grid: the command line narrows the file's lists, as in Hydra
    args = ["-m", "+sweep=smoke", f"hydra.sweep.dir={sweep}", "budget.steps=4", "logger.progress=false",
            "sampler=uniform", "estimator=mezo"]
    first = run_zorun(args, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    job_dirs = sorted(p.parent for p in sweep.glob("*/summary.json"))
    assert [d.name for d in job_dirs] == ["budget.steps=4,estimator=mezo,sampler=uniform,seed=0",
                                          "budget.steps=4,estimator=mezo,sampler=uniform,seed=1"]
    summaries = [json.loads((d / "summary.json").read_text()) for d in job_dirs]
    assert all(s["status"] == "completed" and s["steps"] == 4 for s in summaries)

    groups = set()
    for job in job_dirs:
        runs = list(job.glob("wandb/offline-run-*/run-*.wandb"))
        assert len(runs) == 1, f"one offline W&B run per job in {job}"
        (run,) = list(wandb_run_records(runs[0]))
        assert run.job_type == "mezo" and run.project == "zorun"
        assert set(run.tags) >= {"tiny", "synthetic", "mezo", "uniform"}
        groups.add(run.run_group)
    assert len(groups) == 1 and groups.pop().startswith("smoke-"), "one W&B group per launch"

    report = sweep / "report"
    rows = list(__import__("csv").DictReader((report / "results.csv").open()))
    tests = [s["test"]["accuracy"] for s in summaries]
    assert len(rows) == 1 and rows[0]["method"] == "mezo" and rows[0]["seeds"] == "2"
    assert float(rows[0]["test_accuracy_mean"]) == pytest.approx(sum(tests) / 2)
    assert float(rows[0]["test_accuracy_std"]) == pytest.approx(abs(tests[0] - tests[1]) / 2 ** 0.5)
    assert "| tiny | synthetic |" in (report / "report.md").read_text()
    for name in ("loss_tiny_synthetic.png", "time_breakdown.png"):
        image = matplotlib.image.imread(report / name)
        assert image.shape[0] > 200 and image.shape[1] > 300 and image[..., :3].std() > 0.05, name
    assert list(report.glob("wandb/offline-run-*/run-*.wandb")), "the grid table's W&B run"

    mtimes = [(d / "summary.json").stat().st_mtime_ns for d in job_dirs]
    second = run_zorun(args, tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert (second.stdout + second.stderr).count("skipped: completed with the same config") == 2
    assert [(d / "summary.json").stat().st_mtime_ns for d in job_dirs] == mtimes
    assert len(list(job_dirs[0].glob("wandb/offline-run-*"))) == 1, "a skipped job starts no W&B run"


def _job_config(sweep_dir: Path, job: str, overrides):
    """A composed multirun job config with Hydra's runtime fields set, as a launcher would."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra.sweep.dir={sweep_dir}", *overrides], return_hydra_config=True)
    cfg.hydra.mode = RunMode.MULTIRUN
    cfg.hydra.runtime.output_dir = str(sweep_dir / job)
    HydraConfig.instance().set_config(cfg)
    task_cfg = cfg.copy()
    with open_dict(task_cfg):
        del task_cfg["hydra"]
    return task_cfg


@pytest.fixture
def hydra_job():
    """HydraConfig is process-global: leave it as found."""
    from hydra.core.hydra_config import HydraConfig

    yield _job_config
    HydraConfig.instance().cfg = None


def test_resume_is_keyed_on_the_config_hash_and_force_reruns(tmp_path, hydra_job):
    from zorun.identity import config_hash
    from zorun.sweep.multirun import skip_if_completed

    done = hydra_job(tmp_path, "old-name", ["seed=3"])
    (tmp_path / "old-name").mkdir()
    (tmp_path / "old-name" / "summary.json").write_text(
        json.dumps({"status": "completed", "config_hash": config_hash(done), "test": {"accuracy": 0.9}}))

    same = hydra_job(tmp_path, "new-name", ["seed=3", "logger.mode=disabled"])  # logging is not identity
    assert skip_if_completed(same)["test"] == {"accuracy": 0.9}
    assert json.loads((tmp_path / "new-name" / "skipped.json").read_text())["summary"].endswith("old-name/summary.json")
    assert skip_if_completed(hydra_job(tmp_path, "other", ["seed=4"])) is None

    (tmp_path / "old-name" / "metrics.jsonl").write_text('{"step": 1}\n')
    forced = hydra_job(tmp_path, "old-name", ["seed=3", "force=true"])
    assert skip_if_completed(forced) is None
    assert not (tmp_path / "old-name" / "metrics.jsonl").exists(), "a re-run starts a fresh metrics.jsonl"

    failed = tmp_path / "old-name" / "summary.json"
    failed.write_text(json.dumps({"status": "failed", "config_hash": config_hash(done)}))
    assert skip_if_completed(hydra_job(tmp_path, "old-name", ["seed=3"])) is None
