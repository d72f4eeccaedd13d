"""Checkpoint files, exact undo of non-finite steps, divergence, replay, and the bad inputs (one line each)."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_llama
from test_resume import ADAM_ADALEZO, compose_cfg, run_here
from zorun import checkpoint, kernels
from zorun.commands import cli as zcli
from zorun.checkpoint import (PARAMS, STATE, SUMS, Checkpoint, CheckpointError, Checkpoints, NonFiniteError,
                              join_tensors, rng_state, set_rng_state, split_tensors)
from zorun.errors import ZorunError
from zorun.params import ParamSpace
from zorun.plan import Plan
from zorun.preflight import preflight
from zorun.replay import run_replay
from zorun.run import Run
from zorun.stack import Stack
from zorun.tracking.files import check_writable
from zorun.trajectory import ReplayError


# ------------------------------------------------------------------ files
def test_state_trees_round_trip_tensors_through_safetensors_and_the_rest_through_json(tmp_path):
    gen = torch.Generator().manual_seed(3)
    state = {"m": [torch.randn(3, 2), None, torch.zeros(4, dtype=torch.float64)], "t": 7, "beta": 0.9,
             "optimizer": {0: {"step": torch.tensor(3.0)}, 5: {"step": torch.tensor(1.0)}},  # torch.optim's int keys
             "draw": {"counts": torch.tensor([0, 2, 1]), "name": "x"}, "generator": gen.get_state()}
    space = ParamSpace.from_model(tiny_llama())
    path = Checkpoints(tmp_path, keep=2).save(5, space, {"config": {}, "logs": {}}, {"estimator": state})
    ckpt = Checkpoint.open(path)
    back = ckpt.load_state()["estimator"]
    assert back["t"] == 7 and back["beta"] == 0.9 and back["m"][1] is None and back["draw"]["name"] == "x"
    assert sorted(back["optimizer"]) == [0, 5] and float(back["optimizer"][0]["step"]) == 3.0
    assert torch.equal(back["m"][0], state["m"][0]) and back["m"][2].dtype == torch.float64
    assert torch.equal(back["draw"]["counts"], state["draw"]["counts"])
    restored = torch.Generator()
    restored.set_state(back["generator"])
    assert torch.equal(torch.rand(3, generator=restored), torch.rand(3, generator=gen))
    assert json.loads((path / "state.json").read_text())["format"] == 2
    with pytest.raises(TypeError, match="state at '/bad'"):
        split_tensors({"bad": object()}, "", {})
    with pytest.raises(TypeError, match="mixes key types"):
        split_tensors({"a": 1, 2: 3}, "", {})
    tensors = {}
    assert join_tensors(split_tensors(state, "", tensors), tensors)["t"] == 7


def test_saves_are_atomic_keep_the_newest_k_and_never_hold_non_finite_values(tmp_path):
    space = ParamSpace.from_model(tiny_llama())
    store = Checkpoints(tmp_path, keep=2)
    (tmp_path / ".tmp-step-00000009-123").mkdir(parents=True)  # a save a kill interrupted
    for step in (1, 2, 3):
        store.save(step, space, {"config": {}, "logs": {}}, {})
    assert [s for s, _ in store.steps()] == [2, 3]  # the partial one is never listed
    store.discard_partial()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000002", "step-00000003"]
    saved = load_file(str(tmp_path / "step-00000003" / PARAMS))
    assert all(torch.equal(saved[b.name], b.tensor.detach()) for b in space.blocks)
    with torch.no_grad():
        space.blocks[1].tensor[0] = float("nan")
    with pytest.raises(NonFiniteError, match=space.blocks[1].name):
        store.save(4, space, {"config": {}, "logs": {}}, {})
    assert [s for s, _ in store.steps()] == [2, 3] and not list(tmp_path.glob(".tmp-*"))


def test_every_file_is_verified_against_its_sha256_and_the_previous_checkpoint_is_offered(tmp_path):
    space = ParamSpace.from_model(tiny_llama())
    store = Checkpoints(tmp_path, keep=2)
    for step in (1, 2):
        store.save(step, space, {"config": {}, "logs": {}}, {"rng": rng_state()})
    newest = tmp_path / "step-00000002"
    sums = (newest / SUMS).read_text()
    assert sorted(line.split("  ")[1] for line in sums.splitlines()) == sorted([PARAMS, STATE, "state.json"])
    assert Checkpoints(tmp_path, 2).latest().step == 2
    for name in (PARAMS, STATE, "state.json"):
        original = (newest / name).read_bytes()
        flipped = bytearray(original)
        flipped[-2] ^= 0x01  # same size: only the checksum can tell
        (newest / name).write_bytes(bytes(flipped))
        os.utime(newest / name, ns=(1, 1))  # (this process remembers digests by inode, size and mtime)
        with pytest.raises(CheckpointError) as err:
            Checkpoints(tmp_path, 2).latest()
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"checkpoint {newest} is unusable: ")
        assert (f"{name} does not match its sha256" in msg or name == "state.json") and \
            "move it out of" in msg and "resume from step-00000001, the previous checkpoint" in msg
        (newest / name).write_bytes(original)
    (newest / SUMS).write_text(sums.splitlines()[0] + "\n")
    with pytest.raises(CheckpointError, match="SHA256SUMS lacks"):
        Checkpoints(tmp_path, 2).latest()
    (newest / SUMS).unlink()
    with pytest.raises(CheckpointError, match="SHA256SUMS cannot be read"):
        Checkpoints(tmp_path, 2).latest()
    shutil.rmtree(tmp_path / "step-00000001")
    with pytest.raises(CheckpointError, match="no older checkpoint is kept: start a new run directory"):
        Checkpoints(tmp_path, 2).latest()


def test_a_failed_write_leaves_the_previous_checkpoints_and_no_temporary_directory(tmp_path, monkeypatch):
    space = ParamSpace.from_model(tiny_llama())
    store = Checkpoints(tmp_path, keep=2)
    store.save(1, space, {"config": {}, "logs": {}}, {})

    def full_disk(tensors, path, metadata=None):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with pytest.raises(CheckpointError) as err:
        store.save(2, space, {"config": {}, "logs": {}}, {})
    assert str(err.value) == (f"cannot write checkpoint step 2 in {tmp_path} (No space left on device); the previous "
                              f"checkpoint step-00000001 is intact; free space, then zorun resume={tmp_path.parent}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001"]


def test_rng_states_round_trip():
    state = rng_state()
    expected = (torch.rand(3), random.random(), np.random.rand())
    set_rng_state(state)
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]


# ---------------------------------------------------------- bad checkpoints
@pytest.fixture
def saved_run(tmp_path):
    run_here(tmp_path, "budget.steps=2", "budget.checkpoint_every=2")
    return tmp_path, Checkpoints(tmp_path / "checkpoints", 2).steps()[-1][1]


def one_line_error(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg
    return msg


def test_truncated_or_corrupted_checkpoint_is_one_line(saved_run):
    run_dir, path = saved_run
    params = path / PARAMS
    data = params.read_bytes()
    params.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        Run(compose_cfg("budget.steps=4"), str(run_dir)).setup()
    assert "params.safetensors is" in one_line_error(err) and "truncated" in str(err.value)

    params.write_bytes(b"\xff" * 8 + data[8:])  # the right size, a garbage header length
    space = Stack.build(compose_cfg()).space
    with pytest.raises(CheckpointError) as err:
        Checkpoint.open(path).load_params(space)
    assert PARAMS in one_line_error(err)

    (path / "state.json").write_text('{"format": 1, "step": 2, "mod')
    with pytest.raises(CheckpointError) as err:
        Checkpoints(run_dir / "checkpoints", 2).latest()
    assert "state.json cannot be read" in one_line_error(err)


def test_checkpoint_of_another_model_is_one_line(saved_run):
    run_dir, _ = saved_run
    with pytest.raises(CheckpointError) as err:
        Run(compose_cfg("budget.steps=4", "model.arch.hidden_size=32"), str(run_dir)).setup()
    msg = one_line_error(err)
    assert "another model" in msg and "[640, 64]" in msg and "[640, 32]" in msg


# ------------------------------------------------------------- safe inputs
def test_injected_target_is_refused_at_preflight(capsys, tmp_path):
    for override in ("+hydra.callbacks.evil._target_=os.system", "+task.options.x._target_=builtins.print",
                     "hydra.callbacks.report._target_=subprocess.call",
                     "+hydra.job_logging.handlers.x.class=os.system"):
        with pytest.raises(SystemExit) as exc:
            zcli.main([override, f"hydra.run.dir={tmp_path}"])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("zorun: error: refusing "), err
    assert not list(tmp_path.iterdir())
    assert preflight(["hydra/launcher=submitit_slurm"], multirun=True) == 1  # a plugin launcher is fine


def read_only_dir(tmp_path: Path) -> Path:
    """A directory this process cannot write: permission bits, or (as root, who ignores them) /sys."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        (ro / "probe").touch()
    except OSError:
        return ro
    (ro / "probe").unlink()
    return Path("/sys")


def test_read_only_output_dir_is_one_line_before_anything_runs(tmp_path, capsys):
    ro = read_only_dir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        zcli.main([f"hydra.run.dir={ro}/run"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not writable" in err and "hydra.run.dir=PATH" in err, err
    with pytest.raises(ZorunError, match="is not writable"):
        check_writable(ro / "a" / "b")


def test_trust_remote_code_is_off_unless_set(monkeypatch, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zorun.models import load_model, load_tokenizer

    seen = []
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: seen.append(k) or tiny_llama())
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: seen.append(k) or
                        type("T", (), {"pad_token": "p"})())
    cfg = compose_cfg("model.init=pretrained", f"model.path={tmp_path}", "model.tokenizer=null").model
    load_model(cfg, 0), load_tokenizer(cfg)
    cfg.trust_remote_code = True
    load_model(cfg, 0)
    assert [k["trust_remote_code"] for k in seen] == [False, False, True]


# ------------------------------------------------------ non-finite steps
def nan_at(steps):
    """Hook: the loss oracle returns NaN on the given steps (a forced non-finite loss)."""
    def hook(run: Run) -> None:
        make_loss = run.data.make_loss

        def patched(batch, **kwargs):
            fn = make_loss(batch, **kwargs)
            return (lambda: float("nan")) if run.step in steps else fn

        run.data.make_loss = patched
    return hook


@pytest.mark.parametrize("every", [0, 2], ids=["from-base-model", "from-checkpoint"])
def test_a_skipped_step_restores_parameters_bit_for_bit(tmp_path, every):
    """θ after a NaN step equals θ before it; undoing the probe by re-adding εz would not."""
    snapshots = {}

    def hook(run: Run) -> None:
        nan_at({5})(run)
        inner = run.train_step

        def train_step(*args):
            snapshots.setdefault(run.step, run.stack.space.snapshot())
            return inner(*args)

        run.train_step = train_step

    run, summary = run_here(tmp_path, "budget.steps=8", f"budget.checkpoint_every={every}", hook=hook)
    assert summary["status"] == "completed" and summary["skipped_steps"] == 1
    assert all(torch.equal(a, b) for a, b in zip(snapshots[5], snapshots[6]))
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[4], snapshots[5]))  # steps do move θ
    events = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines() if "nonfinite" in l]
    assert events == [{"step": 6, "nonfinite": [None, None], "action": "skip", "wall_s": events[0]["wall_s"]}]

    # the naive undo of the same probe (θ + εz − 2εz + εz) is not exact: what the replay avoids
    space = run.stack.space
    for block, saved in zip(space.blocks, snapshots[5]):
        block.tensor.data.copy_(saved)
    plan = Plan(seed=run.stack.sampler.step_seed(5), blocks=space.all_blocks())
    eps = run.cfg.estimator.eps
    kernels.perturb_(space, plan, eps)
    kernels.perturb_(space, plan, -2 * eps)
    kernels.update_(space, plan, restore=eps, coef=0.0)
    assert not all(torch.equal(b.tensor, s) for b, s in zip(space.blocks, snapshots[5]))

    assert run_replay(tmp_path, None, tmp_path / "replayed.safetensors", None, 0.0) == 0  # replay skips step 5 too


def test_consecutive_nonfinite_steps_end_diverged_and_stop_stops_at_once(tmp_path):
    _, summary = run_here(tmp_path / "skip", "budget.steps=10", "budget.max_nonfinite_skips=3", hook=nan_at({2, 3, 4}))
    assert summary["status"] == "diverged" and summary["steps"] == 5 and summary["skipped_steps"] == 3
    assert summary["error"].startswith("3 consecutive non-finite losses (steps 2..4)")
    _, summary = run_here(tmp_path / "stop", "budget.steps=10", "budget.on_nonfinite=stop", hook=nan_at({2}))
    assert summary["status"] == "diverged" and summary["steps"] == 3 and "budget.on_nonfinite=skip" in summary["error"]


def test_huge_lr_diverges_and_no_checkpoint_holds_the_blown_up_parameters(tmp_path):
    """estimator.lr=1e12 on the tiny model: the first update blows θ up by 1e12 while it stays finite. The
    parameter-norm guard ends the run diverged at once, and the step-1 save it guards writes nothing."""
    _, summary = run_here(tmp_path, "budget.steps=20", "budget.checkpoint_every=1", "estimator.lr=1e12",
                          "budget.max_nonfinite_skips=3")
    assert summary["status"] == "diverged" and summary["steps"] == 1
    assert "L2 norm grew" in summary["error"] and "(last checkpoint: none)" in summary["error"]
    assert Checkpoints(tmp_path / "checkpoints", 1).steps() == []


# ------------------------------------------------------------------ replay
def test_replay_rebuilds_the_trained_parameters_bit_for_bit(tmp_path, capsys):
    run_here(tmp_path / "mezo", "budget.steps=12", "budget.checkpoint_every=6")
    assert run_replay(tmp_path / "mezo", None, None, None, 0.0) == 0
    out = capsys.readouterr().out
    assert "equal bit for bit" in out and "bytes per 1,000 steps" in out
    assert run_replay(tmp_path / "mezo", 6, tmp_path / "six.safetensors", None, 0.0) == 0  # a prefix: step 6

    run_here(tmp_path / "adam", "budget.steps=12", "budget.checkpoint_every=12", *ADAM_ADALEZO)
    assert run_replay(tmp_path / "adam", None, None, None, 0.0) == 0  # adalezo's layer subsets with IPW weights
    trained = load_file(str(tmp_path / "adam" / "checkpoints" / "step-00000012" / PARAMS))
    replayed = load_file(str(tmp_path / "adam" / "replayed.safetensors"))
    assert all(torch.equal(trained[k], replayed[k]) for k in trained)

    log = tmp_path / "mezo" / "trajectory.jsonl"
    lines = log.read_text().splitlines()
    edit = json.loads(lines[3])  # step 2
    edit["seed"] += 1  # another direction: replays, but ends elsewhere
    log.write_text("\n".join(lines[:3] + [json.dumps(edit)] + lines[4:]) + "\n")
    assert run_replay(tmp_path / "mezo", None, None, None, 0.0) == 1
    assert "max |difference|" in capsys.readouterr().out
    edit["losses"][0] += 1e-3  # a loss that does not give the logged projected gradient
    log.write_text("\n".join(lines[:3] + [json.dumps(edit)] + lines[4:]) + "\n")
    with pytest.raises(ReplayError, match="step 2: the replayed projected gradient"):
        run_replay(tmp_path / "mezo", None, None, None, 0.0)


def test_plans_round_trip_through_the_log_and_runs_are_packed():
    from zorun.trajectory import decode_plan, encode_plan

    cases = [Plan(seed=5, blocks=torch.tensor([3, 4, 5, 9, 10, 11, 12]),
                  weight=torch.tensor([2.5, 2.5, 2.5, 1.25, 1.25, 1.25, 1.25])),
             Plan(seed=6, blocks=torch.tensor([0, 2, 4]), scale=torch.tensor([0.1, 0.3, 0.7]).float()),
             Plan(seed=7, blocks=torch.arange(20))]
    for plan in cases:
        record = json.loads(json.dumps(encode_plan(plan, 20)))
        back = decode_plan(record, 20)
        for field in ("blocks", "scale", "weight"):
            a, b = getattr(plan, field), getattr(back, field)
            assert (a is None and b is None) or (torch.equal(a, b) and a.dtype == b.dtype), field
    assert encode_plan(cases[0], 20)["blocks"] == {"int64": {"ranges": [[3, 3], [9, 4]]}}
    assert encode_plan(cases[0], 20)["weight"] == {"float32": {"runs": [[2.5, 3], [1.25, 4]]}}
    assert encode_plan(cases[2], 20) == {"seed": 7}  # every block: nothing but the seed
