"""Hostile input, one test per class of attack: no injected code runs, a refused command changes nothing in the
run directory it refuses, one writer per run directory, checkpoints verified on load, and every bad value is one
line with exit 2 (no traceback). docs/checkpoints.md states these guarantees; tests/test_fuzz.py generates more."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from zorun.commands import cli as zcli
from zorun.checkpoint import PARAMS, SUMS, Checkpoints
from zorun.norm_guard import NormGuard
from zorun.params import ParamSpace
from zorun.preemption import StopSignals
from zorun.resume import lock_run_dir, unlock_run_dir

from conftest import ROOT, read_summary, run_cli, tiny_llama

FAST = ["budget=smoke", "budget.steps=4", "budget.log_every=1", "task.num_train=32", "task.num_dev=8",
        "task.num_test=8", "logger=none", "logger.progress=false"]


# ------------------------------------------------------------------ helpers
def refused(argv, capsys) -> str:
    """Run `zorun ARGV` in this process; assert exit 2 and a single `zorun: error:` line; return it."""
    with pytest.raises(SystemExit) as exc:
        zcli.main(list(argv))
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert exc.value.code == 2, (exc.value.code, out.err)
    assert len(lines) == 1 and lines[0].startswith("zorun: error: "), out.err
    assert "Traceback" not in out.err + out.out
    return lines[0]


def tree(folder: Path) -> dict:
    """Every file under folder, by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A completed run with checkpoints at steps 2 and 4 (a real `python -m zorun`)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    proc = run_cli(*FAST, "budget.checkpoint_every=2", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run_dir


@pytest.fixture
def run_dir(finished, tmp_path) -> Path:
    """This test's own copy of the finished run."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


# ---------------------------------------------------------- 1. injection
INJECTIONS = [
    ["+hydra.callbacks.x._target_=zorun.checkpoint.Path.unlink", "+hydra.callbacks.x._args_=[{victim}]"],
    ["+hydra.callbacks.x._target_=zorun.commands.cli.os.system", "+hydra.callbacks.x._args_=['rm {victim}']"],
    ["hydra.callbacks.report._target_=zorun.resume.os.remove", "+hydra.callbacks.report._args_=[{victim}]"],
    ["+hydra.callbacks.report._args_=[{victim}]"],  # an allowed class, called differently
    ["+hydra.callbacks.x._target_=os.system"],
    ["+hydra.callbacks.x=zorun.checkpoint.Path.unlink"],
    ["+task.options.x._target_=builtins.exec"],
    ["hydra.sweeper._target_=zorun.checkpoint.shutil.rmtree"],
    ["hydra.launcher._target_=subprocess.Popen"],
    ["+hydra.sweeper.custom_search_space=zorun.commands.cli.os.system"],
    ["+hydra.job_logging.handlers.x.class=zorun.commands.cli.os.system"],
    ["hydra.job_logging.handlers.console.class=subprocess.Popen"],
    ["hydra.job_logging.handlers.console.stream=ext://os.system"],
    ["hydra.job_logging.handlers.file.filename={victim}"],
    ["+hydra.job.env_set.LD_PRELOAD=/tmp/evil.so"],
    ["hydra.searchpath=[pkg://os]"],
    ["--experimental-rerun", "{victim}"],
]


@pytest.mark.parametrize("argv", INJECTIONS, ids=[" ".join(a) for a in INJECTIONS])
def test_injected_callables_are_refused_before_anything_runs(argv, tmp_path, capsys):
    victim = tmp_path / "victim"
    victim.write_text("still here")
    line = refused([a.format(victim=victim) for a in argv] + [f"hydra.run.dir={tmp_path / 'out'}"], capsys)
    assert "refusing" in line or "experimental-rerun" in line, line
    assert victim.read_text() == "still here" and not (tmp_path / "out").exists()


def test_replayed_overrides_are_checked_before_they_run(run_dir, tmp_path, capsys):
    victim = tmp_path / "victim"
    victim.write_text("still here")
    saved = run_dir / ".hydra" / "overrides.yaml"
    original = saved.read_text()
    for added in (["- +hydra.callbacks.x._target_=zorun.checkpoint.Path.unlink\n",
                   f"- '+hydra.callbacks.x._args_=[{victim}]'\n"], ["- +task.x._target_=builtins.exec\n"]):
        saved.write_text(original + "".join(added))
        before = tree(run_dir)
        line = refused([f"resume={run_dir}"], capsys)
        assert str(saved) in line or "refusing" in line or "unknown key" in line, line
        assert victim.read_text() == "still here" and tree(run_dir) == before


def test_config_dir_files_are_checked_as_hydra_reads_them(tmp_path, capsys):
    victim = tmp_path / "victim"
    victim.write_text("still here")
    user = tmp_path / "conf"
    (user / "model").mkdir(parents=True)
    (user / "hydra" / "job_logging").mkdir(parents=True)
    (user / "mine.yaml").write_text(f"defaults:\n  - config\n  - _self_\nhydra:\n  callbacks:\n    x:\n"
                                    f"      _target_: zorun.checkpoint.Path.unlink\n      _args_: [{victim}]\n")
    (user / "model" / "evil.yaml").write_text("defaults:\n  - tiny\n  - _self_\n"
                                              "arch:\n  init:\n    _target_: builtins.exec\n")
    (user / "hydra" / "job_logging" / "evil.yaml").write_text(
        "version: 1\nhandlers:\n  x:\n    class: zorun.commands.cli.os.system\nroot:\n  handlers: [x]\n")
    (user / "hydra" / "job_logging" / "factory.yaml").write_text(
        "version: 1\nformatters:\n  x:\n    (): zorun.checkpoint.Path.unlink\n    path: victim\n")
    out = f"hydra.run.dir={tmp_path / 'out'}"
    assert "refusing hydra.callbacks.x" in refused(["--config-dir", str(user), "--config-name", "mine", out], capsys)
    assert "refusing model.arch.init._target_" in refused(["--config-dir", str(user), "model=evil", out], capsys)
    line = refused(["--config-dir", str(user), "hydra/job_logging=evil", out], capsys)
    assert "refusing hydra.job_logging.handlers.x.class=zorun.commands.cli.os.system" in line
    line = refused(["--config-dir", str(user), "hydra/job_logging=factory", out], capsys)
    assert "refusing hydra.job_logging.formatters.x.()=zorun.checkpoint.Path.unlink" in line
    assert victim.read_text() == "still here" and not (tmp_path / "out").exists()


# ------------------------------------------- 2. a refusal touches nothing
def test_a_refused_resume_leaves_the_run_dir_byte_identical_and_resumable(run_dir, capsys):
    before = tree(run_dir)
    assert "estimator.lr=0.5" in refused([f"resume={run_dir}", "estimator.lr=0.5"], capsys)
    assert tree(run_dir) == before
    assert "budget.batch_size=4" in refused([f"resume={run_dir}", "budget.batch_size=4"], capsys)
    assert tree(run_dir) == before
    # still resumable as it was: the same command's pre-flight, its run-dir check and its lock pass
    args = zcli._hydra_argv_parser().parse_args([f"resume={run_dir}", "budget.steps=6"])
    single = zcli.check_command(zcli.expand_resume(args.overrides, False), False,
                                zcli.Source.of(args, zcli._app, "config")).single
    zcli.claim_run_dir(single, "config")
    unlock_run_dir(run_dir)


@pytest.mark.slow
def test_a_refusal_only_the_run_finds_puts_back_what_the_attempt_wrote(run_dir):
    """A checkpoint whose model entry was edited (and re-summed): the pre-flight passes, the run refuses."""
    ckpt = Checkpoints(run_dir / "checkpoints", 2).steps()[-1][1]
    meta = json.loads((ckpt / "state.json").read_text())
    meta["model"][0][1] = [1, 2]  # another shape
    (ckpt / "state.json").write_text(json.dumps(meta))
    sums = [ln.split("  ") for ln in (ckpt / SUMS).read_text().splitlines()]
    (ckpt / SUMS).write_text("".join(f"{hashlib.sha256((ckpt / n).read_bytes()).hexdigest()}  {n}\n"
                                     for _, n in sums))
    before = tree(run_dir)
    proc = run_cli(f"resume={run_dir}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("zorun: error:")]
    assert len(errors) == 1 and "another model" in errors[0], proc.stderr[-2000:]
    assert tree(run_dir) == before


# ------------------------------------------------- 3. one writer at a time
HOLD = "import sys, time; from pathlib import Path; from zorun.resume import lock_run_dir; " \
       "lock_run_dir(Path(sys.argv[1])); print('locked', flush=True); time.sleep(120)"


def test_a_second_writer_gets_the_holders_pid_and_a_killed_holder_blocks_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = refused([*FAST, f"hydra.run.dir={run}"], capsys)
        assert f"in use by zorun process {holder.pid}" in line and f"kill {holder.pid}" in line
        assert sorted(p.name for p in run.iterdir()) == [".zorun.lock"]  # the second writer wrote nothing
    finally:
        holder.kill()  # SIGKILL: no clean-up, the lock file stays
        holder.wait()
    assert (run / ".zorun.lock").exists()
    lock_run_dir(run)  # the kernel dropped the dead holder's lock
    unlock_run_dir(run)


# ---------------------------------------------- 4. integrity of checkpoints
def test_a_flipped_byte_in_a_checkpoint_is_one_line_offering_the_previous_one(run_dir, capsys):
    steps = Checkpoints(run_dir / "checkpoints", 2).steps()
    (_, older), (_, newest) = steps
    params = newest / PARAMS
    data = bytearray(params.read_bytes())
    data[len(data) // 2] ^= 0x10  # same size, one bit
    params.write_bytes(bytes(data))
    before = tree(run_dir)
    line = refused([f"resume={run_dir}"], capsys)
    assert f"{newest.name} is unusable: {PARAMS} does not match its sha256" in line, line
    assert f"resume from {older.name}, the previous checkpoint" in line
    assert tree(run_dir) == before
    shutil.move(newest, run_dir / "set-aside")  # the offered fix
    assert Checkpoints(run_dir / "checkpoints", 2).latest().step == 2


@pytest.mark.slow
def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_no_temporary_directory(tmp_path):
    run = tmp_path / "run"
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))  # noqa: E731  smaller than θ
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "zorun", *FAST, "budget.checkpoint_every=2", f"hydra.run.dir={run}"],
                          capture_output=True, text=True, env=env, preexec_fn=limit, timeout=600)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("zorun: error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(errors) == 1 and "cannot write checkpoint step 2" in errors[0] and "File too large" in errors[0]
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert read_summary(run)["status"] == "failed"


# ------------------------------------ 5. tracebacks and wrong exit codes
def _model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    tiny_llama().save_pretrained(folder)
    return folder


def _pickle_bin(folder: Path, marker: Path) -> None:
    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (folder / "model.safetensors").unlink()
    with open(folder / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"w": Evil()}, fh)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_each_traceback_case_is_one_line_exit_2(tmp_path, capsys):
    good = b'{"prompt": "a", "candidates": ["x", "y"], "label": 0}\n'
    model = _model_dir(tmp_path)
    size = (model / "model.safetensors").stat().st_size
    capsys.readouterr()  # save_pretrained's progress bar
    cases = [
        (["model=opt-125m", "model.hf_id=???"], "model.hf_id=??? has no value"),
        (["seed=99999999999999999999"], "seed=99999999999999999999 is out of range"),
        (["task.num_train=0"], "task.num_train=0 is out of range"),
        (["model.device=tpu9"], "model.device=tpu9 is not a device"),
        (["task=local", f"task.path={_write(tmp_path / 'bin.jsonl', bytes(range(256)) * 4)}"], "bin.jsonl:1: "),
        (["task=local", f"task.path={_write(tmp_path / 'l1.jsonl', good + 'é'.encode('latin-1') + good)}"],
         "l1.jsonl:2: not UTF-8 (byte 0xe9 at column 1)"),
        (["task=local", f"task.path={tmp_path}"], f"task.path={tmp_path} is a directory"),
        (["task=local", f"task.path={_write(tmp_path / 'lab.jsonl', good.replace(b'0}', b'true}'))}"],
         "lab.jsonl:1: field 'label' is a boolean, expected an integer"),
    ]
    if not torch.cuda.is_available():
        cases.append((["kernels=triton"], "kernels=triton"))
    for argv, expect in cases:
        assert expect in refused([*argv, f"hydra.run.dir={tmp_path / 'out'}"], capsys)
    with open(model / "model.safetensors", "r+b") as fh:
        fh.truncate(size // 2)
    assert "model.safetensors is truncated or corrupted" in refused([f"model.path={model}"], capsys)
    (model / "config.json").write_text('{"model_type": "llama", ')
    assert "config.json is not a valid JSON object" in refused([f"model.path={model}"], capsys)
    model = _model_dir(tmp_path / "second")
    marker = tmp_path / "pickle-ran"
    _pickle_bin(model, marker)
    capsys.readouterr()
    assert "pytorch_model.bin is a pickle holding more than tensors" in refused([f"model.path={model}"], capsys)
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_second_signal_exits_with_its_own_code(signum, code):
    """The first signal stops after the step (128 + its number); a second stops at once, with 128 + its number."""
    with StopSignals() as signals:
        os.kill(os.getpid(), signum)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signum)
            time.sleep(1)
    assert signals.exit_code == code and signals.interrupt_exit_code == code


# ------------------------------------------ 6. values that cannot be meant
@pytest.mark.parametrize("override,expect", [
    ("budget.steps=1e23", "budget.steps"), ("budget.steps=100000000000000000000000", "must be <= 1000000000"),
    ("estimator.lr=inf", "must be a finite number"), ("estimator.lr=nan", "must be a finite number"),
    ("estimator.q=1e12", "estimator.q"), ("estimator.q=1000000000000", "must be <= 10000"),
    ("estimator.eps=-inf", "must be a finite number"),
])
def test_values_that_cannot_be_meant_are_refused_before_loading(override, expect, tmp_path, capsys):
    line = refused([override, f"hydra.run.dir={tmp_path}"], capsys)
    assert expect in line and override.split("=")[0] in line


@pytest.mark.slow
def test_a_run_whose_parameters_blow_up_while_finite_ends_diverged(tmp_path):
    proc = run_cli(*FAST, "estimator.lr=1e30", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    summary = read_summary(tmp_path)
    assert summary["status"] == "diverged" and "L2 norm grew" in summary["error"]


def test_the_norm_guard_measures_values_beyond_float32_squares():
    model = tiny_llama()
    space = ParamSpace.from_model(model)
    guard = NormGuard(space)
    assert guard.check(space, 1) is None
    with torch.no_grad():
        space.blocks[0].tensor.fill_(1e31)  # finite, but its square overflows float32
    why = guard.check(space, 7)
    assert why is not None and "by step 7" in why and "inf" not in why


# ------------------------------------------------- 7. paths stay in place
@pytest.mark.parametrize("override", ["model.name=../../../../tmp/x", "task.name=a/b", "hydra.job.name=..",
                                      "model.name=", "hydra.output_subdir=../.."])
def test_names_that_become_path_components_are_refused(override, tmp_path, capsys):
    line = refused([override, f"hydra.run.dir={tmp_path / 'out'}"], capsys)
    assert "cannot name a directory or file" in line
    assert not (tmp_path / "out").exists()
