"""Shared helpers: compose zorun's config, run the CLI in a subprocess, build tiny random models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Tests never reach a model hub: fail fast instead of retrying (read when huggingface_hub is imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose as hydra_compose  # noqa: E402
from hydra import initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from zorun.config import register_configs  # noqa: E402
from zorun.paths import CONF_DIR  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m zorun ARGS` as a user would run it; returns the finished process."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    full_env.pop("HYDRA_FULL_ERROR", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "zorun", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def read_summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def tiny_llama(hidden: int = 16, layers: int = 1, vocab: int = 64, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model("llama", vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                               num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                               max_position_embeddings=64, tie_word_embeddings=True)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture
def cli():
    return run_cli


def compose_config(*overrides: str, name: str = "config", hydra: bool = False) -> DictConfig:
    """zorun's shipped config `name` (config or metatrain) with Hydra overrides, as `zorun` composes it."""
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(name, overrides=list(overrides), return_hydra_config=hydra)


@pytest.fixture
def compose():
    """compose("task=local", ..., name="config", hydra=False) -> the composed DictConfig."""
    return compose_config


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a shared machine it costs many times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Tiny models gain nothing from a second thread, and on a shared machine OpenMP's
# spinning threads slow every CLI subprocess down many times over.
os.environ.setdefault("OMP_NUM_THREADS", "1")
