"""Data-parallel ZO: 2 CPU ranks (gloo) end where one process on the full batch ends.

The ranks are spawned with torch.multiprocessing and run the library's Run
with torchrun's environment variables set, over several estimator/sampler
pairs in one process group; the reference runs in this process. A CLI run
under torchrun checks the launcher path and that rank 0 alone wrote files.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir

from zorun.commands.cli import data_parallel_argv
from zorun.errors import ZorunError
from zorun.paths import CONF_DIR
from zorun.run import Run
from zorun.stack import check_data_parallel

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4
BASE = ["logger=none", "logger.progress=false", "budget=smoke", f"budget.steps={STEPS}", "budget.log_every=1",
        "budget.checkpoint_every=0", "task.num_train=64", "task.num_dev=0", "task.num_test=0", "estimator.lr=5e-3"]
# Every ZO estimator, both samplers; odd batches (slices of 3 and 4 examples) and the token-weighted LM loss.
CASES = {
    "mezo-uniform-odd": ["estimator=mezo", "budget.batch_size=7"],
    "zo-adam-adalezo-lm": ["estimator=zo-adam", "sampler=adalezo", "task.train_as_classification=false",
                           "budget.batch_size=5", "estimator.lr=1e-3"],
    "hizoo-adalezo": ["estimator=hizoo", "sampler=adalezo"],
    "lozo-m-uniform": ["estimator=lozo-m"],
    "momentum-onesided-q2-adalezo": ["estimator=zo-sgd-momentum", "estimator.one_sided=true", "estimator.q=2",
                                     "sampler=adalezo", "budget.batch_size=3"],
    "sign-uniform": ["estimator=zo-sign", "estimator.lr=1e-4"],
    "lozo-lora": ["estimator=lozo", "model.peft=lora"],
}


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=[*BASE, *overrides])


def run_case(name: str, out: Path):
    run = Run(compose_cfg(CASES[name]), str(out / name))
    run.setup()
    start = [t.clone() for t in run.stack.space.snapshot()]
    run.train()
    summary = run.cleanup()
    return run, start, summary


def rank_main(rank: int, world: int, port: int, out: Path, results: Path) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    run = None
    for name in CASES:
        run, _, _ = run_case(name, out)
        torch.save(run.stack.space.snapshot(), results / f"{name}-rank{rank}.pt")  # the test's file, not the run's
    run.dp.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out, results = tmp_path_factory.mktemp("dp"), tmp_path_factory.mktemp("dp-params")
    # fork: the ranks inherit this process's imports (a spawned interpreter would re-import torch and transformers)
    mp.start_processes(rank_main, args=(2, free_port(), out, results), nprocs=2, join=True, start_method="fork")
    return out, results


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_match_one_process_on_the_full_batch(name, two_ranks, tmp_path):
    out, results = two_ranks
    ranks = [torch.load(results / f"{name}-rank{r}.pt") for r in (0, 1)]
    for a, b in zip(*ranks):
        assert torch.equal(a, b), "every rank applies the identical update"

    single, start, summary = run_case(name, tmp_path)
    moved = max(float((s - e).abs().max()) for s, e in zip(start, single.stack.space.snapshot()))
    diff = max(float((a - b).abs().max()) for a, b in zip(ranks[0], single.stack.space.snapshot()))
    assert moved > 1e-4, "the run must move the parameters for the comparison to mean anything"
    # Summing weighted slice losses in float64 instead of one fp32 mean (and padding each slice to its own
    # width) changes the losses by ~1e-6 relative, which g = ΔL/(2ε) amplifies to ~1e-3 of g; a rank that
    # used its own slice's loss would get a g off by more than 10% (the test below), so 1% separates the two.
    assert diff <= 1e-2 * moved, (diff, moved)
    probes = [[r["losses"] for r in map(json.loads, (d / name / "trajectory.jsonl").read_text().splitlines()[1:])]
              for d in (out, tmp_path)]
    flat = [[v for step in p for v in step] for p in probes]
    assert flat[0] == pytest.approx(flat[1], rel=1e-5, abs=0)  # fp32 forwards of other shapes: ~1e-6

    dp_summary = json.loads((out / name / "summary.json").read_text())
    assert dp_summary["world_size"] == 2 and summary["world_size"] == 1
    assert dp_summary["train_loss"] == pytest.approx(summary["train_loss"], rel=1e-5)
    records = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1)), "one writer: each step logged once"
    trajectory = (out / name / "trajectory.jsonl").read_text().splitlines()
    assert len(trajectory) == 1 + STEPS
    assert sorted(p.name for p in (out / name).iterdir()) == sorted(p.name for p in (tmp_path / name).iterdir())


def test_a_slice_alone_is_not_the_full_batch(tmp_path):
    """The tolerance above is meaningful: half the batch gives a projected gradient more than 10% off."""
    from zorun import kernels

    run = Run(compose_cfg(CASES["mezo-uniform-odd"]), str(tmp_path / "half"))
    run.setup()
    batch, eps = next(run.data.batches()), 1e-3
    full, half = run.data.local_forward(batch)[0], run.data.local_forward(batch[:3])[0]
    plan = run.stack.sampler.plan(0)
    with torch.no_grad():
        kernels.perturb_(run.stack.space, plan, eps)
        plus = float(full()), float(half())
        kernels.perturb_(run.stack.space, plan, -2 * eps)
        minus = float(full()), float(half())
    g_full, g_half = ((p - m) / (2 * eps) for p, m in zip(plus, minus))
    assert abs(g_half - g_full) > 0.1 * abs(g_full), (g_full, g_half)
    run.cleanup()


def test_torchrun_cli_rank0_writes_alone(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
                "-m", "zorun"]
    proc = subprocess.run([*torchrun, *BASE, f"hydra.run.dir={tmp_path / 'run'}", "estimator=zo-adam"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "run"
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "cli.log", "metrics.jsonl", "summary.json",
                                                         "trajectory.jsonl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "the other rank made no directory of its own"
    assert json.loads((run_dir / "summary.json").read_text())["world_size"] == 2
    assert proc.stdout.count("zorun · completed") == 1


@pytest.mark.parametrize("overrides, message", [
    (["estimator=fo-sgd"], "estimator=fo-sgd backpropagates, and zorun's data parallelism shares loss values only"),
    (["model.device_map=auto"], "model.device_map=auto shards one model over the GPUs, torchrun replicates it"),
    (["budget.batch_size=1"], "budget.batch_size=1 is smaller than the 2 ranks"),
])
def test_what_data_parallel_cannot_do_is_refused_in_one_line(overrides, message, tmp_path):
    with pytest.raises(ZorunError, match=re.escape(message)) as err:
        check_data_parallel(compose_cfg(overrides), world=2)  # the checks need no process group
    assert "\n" not in str(err.value)


def test_multirun_under_torchrun_is_refused():
    with pytest.raises(ZorunError, match="-m under torchrun would run every job on every rank"):
        data_parallel_argv([], [], multirun=True)
