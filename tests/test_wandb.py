"""W&B: the mode rules, the offline fallback when the server is unreachable, and that W&B never kills a run."""

from __future__ import annotations

import json
import logging

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from zorun.cli import CONF_DIR
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


def test_unreachable_server_falls_back_to_offline_with_one_warning(wandb_env, monkeypatch, caplog):
    """Online with a key but no reachable server (a closed local port): offline run, one warning."""
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    with caplog.at_level(logging.WARNING, logger=wandb_logger.__name__):
        logger = WandbLogger.start(_logger_cfg(), wandb_env / "run", config={"seed": 0}, group="g",
                                   job_type="mezo", tags=["tiny"], name="n")
        assert logger.run is not None and logger.run.settings.mode == "offline"
        logger.log({"step": 1, "loss": 0.5, "dev": {"accuracy": 0.75}})
        logger.summary({"status": "completed", "test": {"accuracy": 0.7}, "train_loss": float("nan")})
        logger.finish(0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "could not start online (CommError" in warnings[0].getMessage()
    assert "logging offline" in warnings[0].getMessage()
    assert list((wandb_env / "run").glob("wandb/offline-run-*/run-*.wandb"))


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
