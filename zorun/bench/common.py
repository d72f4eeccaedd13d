"""What every zorun-bench command shares: timing, the environment line, devices and composed configs."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, List

import torch

from zorun import kernels
from zorun.errors import ZorunError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_s(fn: Callable[[], None], device: torch.device, repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def environment(device: torch.device) -> Dict[str, Any]:
    env = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
           "kernels": kernels.current()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


def compose(overrides: List[str]):
    from hydra import compose, initialize_config_dir

    from zorun.config import validate
    from zorun.messages import one_line
    from zorun.paths import CONF_DIR
    from zorun.preflight import check_known_keys
    from zorun.registry import check_combination

    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=["model=opt-125m", *overrides, "model.init=random"])
        check_known_keys(cfg)
        validate(cfg)
        check_combination(cfg)
    except Exception as ex:  # Hydra / OmegaConf / ConfigError: one line, exit 2
        raise ZorunError(one_line(ex)) from ex
    return cfg


def device_of(name: str) -> torch.device:
    from zorun.models.loading import resolve_device

    return resolve_device(name)
