"""W&B: the mode rules, the offline fallback when the server is unreachable, that W&B never kills a run, and what
a run and a multirun leave in W&B (artifacts, images, groups, the console line), read back from offline run files."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from zorun.paths import CONF_DIR
from zorun.tracking import wandb_logger
from zorun.tracking.wandb_logger import WandbLogger, resolve_mode

FAKE_KEY = "0123456789abcdef" * 2 + "01234567"  # 40 characters, the shape of a W&B key


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """No real credentials, W&B's files in tmp."""
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    return tmp_path


def test_auto_mode_is_offline_without_credentials_and_online_with_them(wandb_env, monkeypatch):
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert resolve_mode("auto") == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    (wandb_env / "netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    assert resolve_mode("auto") == "online"  # what `wandb login` writes


def test_wandb_mode_env_is_respected_by_auto_and_explicit_modes_win(wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("auto") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_mode("auto") == "offline"
    assert resolve_mode("online") == "online"


def test_logger_none_and_default_compose():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        default = compose("config")
        off = compose("config", overrides=["logger=none"])
    assert default.logger.name == "wandb" and default.logger.mode == "auto"
    assert off.logger.name == "none" and "mode" not in off.logger


def _logger_cfg(**kw):
    base = dict(mode="online", project="zorun-test", entity=None, dir=None, init_timeout_s=2)
    return OmegaConf.create({**base, **kw})


@pytest.mark.parametrize("server", ["http://127.0.0.1:9", "https://api.zorun-test.invalid"],
                         ids=["closed-port", "no-such-host"])
def test_unreachable_server_falls_back_to_offline_with_one_warning(wandb_env, monkeypatch, caplog, server):
    """Online with a key but no reachable server (a closed local port, a name no DNS resolves): offline, one warning."""
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", server)
    with caplog.at_level(logging.WARNING, logger=wandb_logger.__name__):
        logger = WandbLogger.start(_logger_cfg(), wandb_env / "run", config={"seed": 0}, group="g",
                                   job_type="mezo", tags=["tiny"], name="n")
        assert logger.run is not None and logger.run.settings.mode == "offline"
        logger.log({"step": 1, "loss": 0.5, "dev": {"accuracy": 0.75}})
        logger.summary({"status": "completed", "test": {"accuracy": 0.7}, "train_loss": float("nan")})
        logger.finish(0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "could not start online (" in warnings[0].getMessage() and "ValidationError" not in warnings[0].getMessage()
    assert "logging offline" in warnings[0].getMessage()
    assert list((wandb_env / "run").glob("wandb/offline-run-*/run-*.wandb"))


@pytest.mark.parametrize("env", ["", "Offline"])
def test_a_wandb_mode_that_wandb_rejects_does_not_break_the_offline_fallback(wandb_env, monkeypatch, caplog, env):
    """W&B reads WANDB_MODE in every init and refused even the offline attempt (a settings ValidationError)."""
    monkeypatch.setenv("WANDB_MODE", env)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    with caplog.at_level(logging.WARNING, logger=wandb_logger.__name__):
        logger = WandbLogger.start(_logger_cfg(), wandb_env / "run", config={}, group=None, job_type="mezo", tags=[],
                                   name="n")
        assert logger.run is not None and logger.run.settings.mode == "offline"
        logger.finish(0)
    assert not any("ValidationError" in r.getMessage() for r in caplog.records)


def test_wandb_failures_never_kill_a_run(wandb_env, monkeypatch, caplog):
    """A run under logger=wandb whose W&B init fails even offline, and whose log calls raise, completes."""
    import wandb

    from zorun.run import Run

    def broken_init(*args, **kwargs):
        raise wandb.errors.CommError("simulated: no network")

    monkeypatch.setattr(wandb, "init", broken_init)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["budget=smoke", "budget.steps=2", "task.num_train=16", "task.num_dev=8",
                                           "task.num_test=8", "logger.mode=online", "logger.progress=false"])
    run = Run(cfg, str(wandb_env / "job"))
    with caplog.at_level(logging.WARNING, logger=wandb_logger.__name__):
        run.setup()
        assert run.wandb.run is None  # could start neither online nor offline: no W&B
        run.wandb.run = type("Broken", (), {"log": broken_init, "summary": None, "finish": broken_init})()
        run.train()
        summary = run.cleanup()
    assert summary["status"] == "completed"
    assert json.loads((wandb_env / "job" / "summary.json").read_text())["status"] == "completed"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("continuing without W&B" in m for m in messages) == 1
    assert sum("W&B log failed" in m for m in messages) == 1, "one warning however many steps fail"


def wandb_records(run_dir: Path) -> List[Any]:
    """The records of an offline W&B run, read back from its .wandb file: W&B's 7-byte header, then the
    LevelDB log format (32 KiB blocks of chunks: crc32, length, type 1 full | 2 first | 3 middle | 4 last)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32 * 1024
    while pos + 7 <= len(data):
        end = (pos // block + 1) * block
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if end - pos < 7 or (length == 0 and kind == 0):  # a block's zero-filled tail
            pos = end
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def artifacts(run_dir: Path) -> Dict[str, Any]:
    return {r.artifact.name: r.artifact for r in wandb_records(run_dir) if r.WhichOneof("record_type") == "artifact"}


def offline_run(directory: Path) -> Path:
    (run_dir,) = directory.glob("wandb/offline-run-*")
    return run_dir


def test_a_lora_run_logs_its_adapter_and_on_request_its_model_and_says_where_it_went(wandb_env, caplog):
    """Read back from the offline run's files, not mocks: the artifacts, and the console line at start."""
    from zorun.run import Run

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["model.peft=lora", "budget=smoke", "budget.steps=2", "task.num_train=16",
                                           "budget.save_merged=true", "logger.log_model=true", "logger.mode=offline",
                                           "logger.progress=false"])
    run = Run(cfg, str(wandb_env / "job"))
    with caplog.at_level(logging.INFO, logger=wandb_logger.__name__):
        run.setup()
        run.train()
        assert run.cleanup()["status"] == "completed"
    import wandb

    wandb.teardown()  # W&B's service exits, its writer flushed and closed: the files as `wandb sync` reads them
    run_dir = offline_run(wandb_env / "job")
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("W&B offline"))
    assert line == f"W&B offline: run tiny-synthetic-mezo-lora-s0 in {run_dir}; upload it with: wandb sync {run_dir}"
    logged = artifacts(run_dir)
    run_id = run_dir.name.rsplit("-", 1)[1]
    adapter, model = logged[f"adapter-{run_id}"], logged[f"model-{run_id}"]
    assert adapter.type == model.type == "model"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {e.path for e in adapter.manifest.contents}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {e.path for e in model.manifest.contents}


def test_a_multirun_logs_the_report_plots_as_images_and_its_files_in_a_readable_group(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_SERVICE", raising=False)  # this process's W&B service: the CLI starts its own
    result = cli("-m", "seed=0,1", "budget=smoke", "budget.steps=2", "task.num_train=16", "logger.mode=offline",
                 cwd=tmp_path, env={"WANDB_MODE": "", "WANDB_DIR": str(tmp_path / "wandb-home")})
    assert result.returncode == 0, result.stderr
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    report_run = offline_run(sweep_dir / "report")
    records = wandb_records(report_run)
    group = f"{sweep_dir.parent.name}_{sweep_dir.name}"  # date_time-suffix: once, and unique per launch
    assert {r.run.run_group for r in records if r.WhichOneof("record_type") == "run"} == {group}
    assert {r.run.run_group for job in sweep_dir.glob("[01]_*") for r in wandb_records(offline_run(job))
            if r.WhichOneof("record_type") == "run"} == {group}
    logged = {tuple(item.nested_key): json.loads(item.value_json) for r in records
              if r.WhichOneof("record_type") == "history" for item in r.history.item}
    assert {key[0]: value for key, value in logged.items() if key[-1] == "_type" and key[0].startswith("plots/")} == {
        "plots/loss_tiny_synthetic": "image-file", "plots/time_breakdown": "image-file"}
    assert sorted(p.name.split("_")[0] for p in (report_run / "files" / "media" / "images" / "plots").glob("*.png")) \
        == ["loss", "time"]
    report = artifacts(report_run)[f"report-{group}"]
    assert report.type == "report"
    assert {"report.html", "report.md", "results.csv", "jobs.csv", "loss_tiny_synthetic.png"} <= {
        e.path for e in report.manifest.contents}
