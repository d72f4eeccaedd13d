"""Kill and resume: a stopped, SIGTERMed or SIGKILLed run, resumed, ends bit for bit where an uninterrupted one does.

The uninterrupted baselines run in this process; the interrupted runs are real
`python -m zorun` subprocesses that receive real signals. Compared: every
trainable tensor of the final checkpoint (torch.equal, i.e. bit for bit on CPU
float32), the summary's metrics, and metrics.jsonl without wall times.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file

from zorun.checkpoint import PARAMS, Checkpoints
from zorun.paths import CONF_DIR
from zorun.run import Run

ROOT = Path(__file__).resolve().parents[1]
FAST = ["budget=smoke", "budget.batch_size=2", "budget.log_every=1", "task.num_train=32", "task.num_dev=8",
        "task.num_test=8", "logger=none", "logger.progress=false", "budget.checkpoint_on_stop=true"]
METRICS = ("status", "steps", "skipped_steps", "forward_passes", "train_loss", "dev_initial", "dev", "test", "selected")


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=[*FAST, *overrides])


def run_here(run_dir: Path, *overrides: str, hook=None) -> tuple[Run, dict]:
    """A whole run in this process (setup, train, cleanup), with .hydra/config.yaml as the CLI writes it."""
    cfg = compose_cfg(*overrides)
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    run = Run(cfg, str(run_dir))
    run.setup()
    if hook:
        hook(run)
    run.train()
    return run, run.cleanup()


def stop_at(step: int):
    """A hook that raises the stop flag (as the SIGTERM handler does) once `step` steps are done."""
    def hook(run: Run) -> None:
        inner = run.train_step

        def train_step(*args):
            out = inner(*args)
            if run.step == step:
                run.signals.received = signal.SIGTERM
            return out

        run.train_step = train_step
    return hook


def final_params(run_dir: Path) -> dict:
    steps = Checkpoints(run_dir / "checkpoints", keep=1).steps()
    return load_file(str(steps[-1][1] / PARAMS))


def assert_same_run(a: Path, b: Path) -> None:
    pa, pb = final_params(a), final_params(b)
    assert pa.keys() == pb.keys()
    for name in pa:
        assert torch.equal(pa[name], pb[name]), f"{name} differs"
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert {k: sa[k] for k in METRICS} == {k: sb[k] for k in METRICS}
    def records(d):
        return [{k: v for k, v in json.loads(line).items() if k not in ("wall_s", "train_s")}
                for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert records(a) == records(b)
    assert (a / "trajectory.jsonl").read_text() == (b / "trajectory.jsonl").read_text()


def start_cli(run_dir: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "zorun", *FAST, *overrides, f"hydra.run.dir={run_dir}"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def steps_logged(run_dir: Path) -> int:
    log = run_dir / "trajectory.jsonl"
    return log.read_text().count("\n") - 1 if log.exists() else -1  # header + one line per step


def signal_at_steps(procs: dict, cases: dict, root: Path, timeout: float = 120.0) -> None:
    """Send each run its signal as soon as it has logged its step count, polling all runs at once
    (waiting for them one after another would let a fast run finish before its turn)."""
    pending = set(procs)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            _, sig, at = cases[name]
            if steps_logged(root / name) >= at:
                procs[name].send_signal(sig)
                pending.discard(name)
            else:
                assert procs[name].poll() is None, f"{name} ended before step {at}: {procs[name].stderr.read()}"
        time.sleep(0.005)
    for name in pending:
        procs[name].kill()
    assert not pending, f"no step {[cases[n][2] for n in pending]} within {timeout} s for {sorted(pending)}"


LONG = ["budget.steps=50", "budget.checkpoint_every=10"]
ADAM_ADALEZO = ["estimator=zo-adam", "sampler=adalezo"]  # Adam moments + a bandit with its own generator


def test_sigterm_and_sigkill_then_resume_equal_an_uninterrupted_run(tmp_path):
    """SIGTERM mezo/uniform and zo-adam/adalezo, SIGKILL mezo/uniform (three CLI runs at once), resume each."""
    cases = {"term": (LONG, signal.SIGTERM, 8), "term-adam": (LONG + ADAM_ADALEZO, signal.SIGTERM, 8),
             "kill": (LONG, signal.SIGKILL, 15)}
    procs = {name: start_cli(tmp_path / name, *overrides) for name, (overrides, _, _) in cases.items()}
    signal_at_steps(procs, cases, tmp_path)
    errors = {name: proc.communicate(timeout=120)[1] for name, proc in procs.items()}

    resumed_at = {}
    for name in ("term", "term-adam"):
        assert procs[name].returncode == 128 + signal.SIGTERM, errors[name]
        stopped = json.loads((tmp_path / name / "summary.json").read_text())
        assert stopped["status"] == "stopped" and 8 <= stopped["steps"] < 50, stopped
        assert errors[name].strip().splitlines()[-1].startswith(f"zorun: stopped by SIGTERM at step {stopped['steps']}")
        assert Checkpoints(tmp_path / name / "checkpoints", 1).steps()[-1][0] == stopped["steps"]  # saved on the way out
        resumed_at[name] = stopped["steps"]

    assert procs["kill"].returncode == -signal.SIGKILL
    saved = [step for step, _ in Checkpoints(tmp_path / "kill" / "checkpoints", 1).steps()]
    killed_at = steps_logged(tmp_path / "kill")
    assert saved and saved[-1] % 10 == 0 and saved[-1] <= killed_at < 50
    resumed_at["kill"] = saved[-1]

    run_here(tmp_path / "whole", *LONG)
    run_here(tmp_path / "whole-adam", *LONG, *ADAM_ADALEZO)
    for name, (overrides, _, _) in cases.items():  # resume: a relaunch into the same directory
        _, summary = run_here(tmp_path / name, *overrides)
        assert summary["status"] == "completed" and summary["resumed_from"] == resumed_at[name]
        assert not list((tmp_path / name / "checkpoints").glob(".tmp-*"))
        assert_same_run(tmp_path / ("whole-adam" if name == "term-adam" else "whole"), tmp_path / name)


MOMENTUM_Q2 = ["estimator=zo-sgd-momentum", "estimator.one_sided=true", "estimator.q=2", "estimator.schedule=cosine"]


COMBOS = {"zo-adam-adalezo": ADAM_ADALEZO, "momentum-one-sided-q2-cosine": MOMENTUM_Q2,
          "fo-adam": ["estimator=fo-adam"],  # torch.optim's state_dict: int keys, tensors, tuples
          "momentum-ldsd": ["estimator=zo-sgd-momentum", "sampler=ldsd", "sampler.k=3", "sampler.mean_fraction=0.5",
                            "sampler.cosine_every=3"]}  # μ for half the blocks, the cosine diagnostic


@pytest.mark.parametrize("combo", COMBOS)
def test_stop_and_resume_with_state_equals_uninterrupted(tmp_path, combo):
    """Stateful estimators and sampler (their state_dicts must round-trip), q = 2 one-sided, a decaying lr."""
    extra = COMBOS[combo]
    common = ["budget.steps=24", "budget.checkpoint_every=10", "budget.eval_every=8", *extra]
    whole, _ = run_here(tmp_path / "whole", *common)
    _, stopped = run_here(tmp_path / "cut", *common, hook=stop_at(13))
    assert stopped["status"] == "stopped" and stopped["steps"] == 13 and stopped["dev"] is None
    run, resumed = run_here(tmp_path / "cut", *common)
    assert resumed["resumed_from"] == 13 and run.batches_done == 24
    assert_same_run(tmp_path / "whole", tmp_path / "cut")
    assert run.stack.estimator.steps == 24 and run.stack.estimator.state_bytes > 0
    if combo == "zo-adam-adalezo":
        assert run.stack.sampler.observed == 24
        assert (tmp_path / "whole" / "adalezo.jsonl").read_text() == (tmp_path / "cut" / "adalezo.jsonl").read_text()
    if combo == "momentum-ldsd":
        assert (tmp_path / "whole" / "ldsd.jsonl").read_text() == (tmp_path / "cut" / "ldsd.jsonl").read_text()
        assert all(torch.equal(a, b) for a, b in zip(run.stack.sampler.state_dict()["mean"], whole.stack.sampler.state_dict()["mean"]))


def test_resume_refuses_a_changed_config_and_a_missing_checkpoint(tmp_path, capsys):
    from zorun.checkpoint import CheckpointError
    from zorun.errors import ZorunError

    run_here(tmp_path, "budget.steps=3", "budget.checkpoint_every=3")
    cfg = compose_cfg("budget.steps=3", "estimator.lr=0.5")
    with pytest.raises(CheckpointError) as err:
        Run(cfg, str(tmp_path)).setup()
    msg = str(err.value)
    assert "\n" not in msg and "estimator.lr=" in msg and "new run directory" in msg

    extended, summary = run_here(tmp_path, "budget.steps=5", "budget.checkpoint_every=3")  # budget may change
    assert summary["resumed_from"] == 3 and summary["steps"] == 5

    empty = tmp_path / "empty"
    with pytest.raises(ZorunError, match="holds no checkpoint"):
        Run(compose_cfg(f"resume={empty}"), str(empty)).setup()


def test_a_fresh_start_empties_only_the_runs_own_logs(tmp_path):
    """No checkpoint (budget.checkpoint_every=0): a relaunch starts over; other .jsonl files are left alone."""
    (tmp_path / "data.jsonl").write_text('{"prompt": "mine"}\n')
    run_here(tmp_path, "budget.steps=2", "budget.checkpoint_every=0")
    first = (tmp_path / "metrics.jsonl").read_text()
    run_here(tmp_path, "budget.steps=2", "budget.checkpoint_every=0")
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == first.count("\n") == 2
    assert (tmp_path / "trajectory.jsonl").read_text().count("\n") == 3  # header + 2 steps, once
    assert (tmp_path / "data.jsonl").read_text() == '{"prompt": "mine"}\n'
