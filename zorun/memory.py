"""Peak memory of one operation in a fresh process, for zorun-bench: a training step vs an inference
forward (zorun-bench memory), and PertNN meta-training vs its first-order teacher alone (zorun-bench pertnn).

Each measurement builds the configured stack (:mod:`zorun.stack`,
:mod:`zorun.data`) in its own process (``python -m zorun.memory --measure
MODE``), so that none sees another's peak; the peaks are read as
:mod:`zorun.peaks` reads them for a run's summary.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from typing import Dict, List

from hydra import compose, initialize_config_dir

from zorun.config import register_configs
from zorun.data import Data
from zorun.metatrain import MetaTrainer
from zorun.models import load_tokenizer
from zorun.paths import CONF_DIR
from zorun.peaks import peak_bytes, peaks, reset_peak, reset_peaks
from zorun.plan import mix_seed
from zorun.samplers.pertnn_meta import History
from zorun.stack import Stack
from zorun.tasks import build_task
from zorun.timing import Clock


def measure(mode: str, overrides: List[str]) -> Dict[str, float]:
    """Build the configured run, warm up with one forward, then measure one `mode` operation.

    mode: ``forward`` (inference, no grad) or ``step`` (one step of the configured estimator and sampler).
    """
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    task = build_task(cfg.task)
    stack = Stack.build(cfg, load_tokenizer(cfg.model))
    data = Data(stack, task)
    batch = next(data.batches())
    data.make_loss(batch)()  # warm-up: lazily allocated buffers are not what we measure
    loss = data.make_loss(batch, differentiable=stack.estimator.differentiable)
    devices = stack.devices()
    reset_peaks(devices)
    if mode == "forward":
        data.make_loss(batch)()
    else:
        stack.estimator.step(stack.sampler.plan(0), loss, cfg.estimator.lr, Clock())
    return {"mode": mode, "peak_bytes": peak_bytes(stack.device), "peaks": peaks(devices),
            "param_bytes": stack.space.nbytes, "state_bytes": stack.estimator.state_bytes}


def measure_metatrain(mode: str, overrides: List[str]) -> Dict[str, float]:
    """zorun-metatrain's config: after one warm-up iteration (meta-step + teacher step, so the teacher's
    momentum exists), the peak of one `teacher` step alone, or of one whole `metatrain` iteration."""
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("metatrain", overrides=overrides)
    trainer = MetaTrainer(cfg, tempfile.mkdtemp(prefix="zorun-mem-"))
    trainer.setup()
    stack, data = trainer.stack, trainer.data[0]
    batch = next(data.batches())
    loss, loss_grad = data.make_loss(batch), data.make_loss(batch, differentiable=True)
    history = History.start(len(stack.space))
    for step in range(2):  # step 0 warms up; step 1 is measured
        if step == 1:
            reset_peak(stack.device)
        if mode == "metatrain" or step == 0:
            trainer.learner.step(mix_seed(cfg.seed, step), history, loss, loss_grad)
        stack.estimator.step(None, loss_grad, float(cfg.estimator.lr), Clock())
    return {"mode": mode, "peak_bytes": peak_bytes(stack.device), "param_bytes": stack.space.nbytes}


def _measure_in_subprocess(mode: str, overrides: List[str]) -> Dict[str, float]:
    proc = subprocess.run([sys.executable, "-m", "zorun.memory", "--measure", mode, "logger=none", *overrides],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {mode} {' '.join(overrides)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(overrides: List[str], methods: List[str] = ("",)) -> Dict[str, Dict[str, float]]:
    """An inference forward, then one step of each method (ESTIMATOR/SAMPLER, "" for the configured one),
    each in its own process, so that none sees another's peak."""
    out = {"forward": _measure_in_subprocess("forward", overrides), "steps": {}}
    for method in methods:
        extra = []
        if method:
            estimator, _, sampler = method.partition("/")
            extra = [f"estimator={estimator}"] + ([f"sampler={sampler}"] if sampler else [])
        out["steps"][method or "configured"] = _measure_in_subprocess("step", [*overrides, *extra])
    return out


def compare_metatrain(overrides: List[str]) -> Dict[str, Dict[str, float]]:
    """The first-order teacher step alone and a whole meta-training iteration, each in its own process."""
    return {mode: _measure_in_subprocess(mode, overrides) for mode in ("teacher", "metatrain")}


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--measure":
        how = measure_metatrain if sys.argv[2] in ("teacher", "metatrain") else measure
        print(json.dumps(how(sys.argv[2], sys.argv[3:])))
