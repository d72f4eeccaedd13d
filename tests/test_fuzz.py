"""A kept fuzz suite: seeded random hostile input of every class of tests/test_hostile.py.

Generated: override keys from the composed schema with hostile values, hostile keys (hydra.*, _target_, unknown
ones), data files of random bytes, encodings and truncations, and truncations and bit flips of every checkpoint
file. Each case asserts what users are promised (docs/checkpoints.md): the command is accepted, or refused with
exit code 2 and exactly one `zorun: error:` line, never a traceback; and a run directory is unchanged either way.
Commands go through zorun's real entry (cli.run_app) up to the Hydra app, which is replaced by a stub: the
pre-flight, the run-directory check, the lock and the snapshot all run, training does not. FUZZ_SEED varies it."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from zorun.commands import cli as zcli
from zorun.checkpoint import META, PARAMS, STATE, SUMS, Checkpoint, CheckpointError, Checkpoints, rng_state
from zorun.errors import ZorunError
from zorun.models import load_model
from zorun.params import ParamSpace
from zorun.preflight import Source, composing
from zorun.resume import comparable_config
from zorun.tasks.local import read_jsonl

SEED = int(os.environ.get("FUZZ_SEED", "20261207"))
BASE = ["budget=smoke", "logger=none"]
VALUES = ["", "nan", "-inf", "inf", "1e308", "-1", "0", "1e23", "99999999999999999999", "-99999999999999999999",
          "???", "null", "true", "[1,2]", "{a: 1}", "${oc.env:NO_SUCH_VAR_ZORUN}", "${hydra:runtime.cwd}",
          "../../../tmp/x", "a/b", "é", "\u202e", "'x y'", "0x10", "1_000", "${now:%Y}", "[]", "{}",
          "zorun.checkpoint.Path.unlink", "ext://os.system", "${oc.decode:'[1]'}"]
HOSTILE_KEYS = ["+hydra.callbacks.x._target_", "hydra.callbacks.report._target_", "+hydra.callbacks.report._args_",
                "+hydra.job_logging.handlers.x.class", "hydra.job_logging.handlers.console.class",
                "hydra.launcher._target_", "hydra.sweeper._target_", "+hydra.job.env_set.LD_PRELOAD",
                "+model.arch.x._target_", "+task.x", "+zzz", "~model", "~hydra.callbacks.report",
                "hydra.run.dir", "hydra.output_subdir", "hydra.job.name", "+hydra.sweeper.custom_search_space"]


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def base_cfg() -> DictConfig:
    with composing(Source.default()) as compose:
        return compose(BASE)


@pytest.fixture(scope="module")
def finished(base_cfg, tmp_path_factory) -> Path:
    """A run directory as a completed `zorun budget=smoke logger=none` leaves it, with checkpoints at steps 2 and 4
    (written directly: nothing is trained)."""
    run = tmp_path_factory.mktemp("fuzz") / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in BASE))
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(base_cfg, resolve=False).split("hydra:")[0])
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.69}\n' * 4)
    (run / "cli.log").write_text("[zorun.run][INFO] - done\n")
    (run / "summary.json").write_text(json.dumps({"status": "completed", "steps": 4}))
    space = ParamSpace.from_model(load_model(base_cfg.model, base_cfg.seed))
    store = Checkpoints(run / "checkpoints", 2)
    for step in (2, 4):
        store.save(step, space, {"config": comparable_config(base_cfg), "logs": {}}, {"rng": rng_state()})
    return run


def tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def stub_app() -> None:
    """Stands for the Hydra app: reached only by an accepted command."""


def command(argv, capsys, monkeypatch) -> int:
    """zorun ARGV through cli.run_app with the app stubbed; 0 if accepted, else 2 after exactly one error line."""
    monkeypatch.setattr("sys.argv", ["zorun"])
    try:
        zcli.run_app(stub_app, "config", list(argv), "zorun")
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out, (argv, out.err)
    errors = [line for line in out.err.strip().splitlines() if line]
    if code == 0:
        assert not [e for e in errors if e.startswith("zorun: error")], (argv, out.err)
    else:
        assert code == 2 and len(errors) == 1 and errors[0].startswith("zorun: error: "), (argv, code, out.err)
    return code


def leaf_keys(cfg: DictConfig) -> list:
    body = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
    keys = []

    def walk(node, prefix):
        for key in node.keys():
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
                walk(child, f"{prefix}{key}.")
            else:
                keys.append(f"{prefix}{key}")

    walk(body, "")
    return keys


# --------------------------------------------------------------- overrides
def test_random_overrides_are_accepted_or_one_line_and_leave_the_run_dir_unchanged(base_cfg, finished, tmp_path,
                                                                                 capsys, monkeypatch):
    rng = random.Random(SEED)
    keys = leaf_keys(base_cfg)
    before = tree(finished)
    for case in range(14):
        key = rng.choice(HOSTILE_KEYS) if case % 3 == 0 else rng.choice(keys)
        override = key if key.startswith("~") else f"{key}={rng.choice(VALUES)}"
        argv = [f"resume={finished}", override] if case % 2 else [*BASE, override, f"hydra.run.dir={tmp_path / 'new'}"]
        code = command(argv, capsys, monkeypatch)
        if any(part in key for part in ("_target_", ".class", "_args_", "env_set")):
            assert code == 2, argv  # whatever the value: nothing outside the allow-list is instantiated
        assert tree(finished) == before, argv


# -------------------------------------------------------------- data files
def _data_file(rng: random.Random, path: Path) -> bytes:
    good = [json.dumps({"prompt": f"p{i} é", "candidates": ["yes", "no"], "label": i % 2}) for i in range(6)]
    kind = rng.randrange(6)
    if kind == 0:
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
    elif kind == 1:
        data = "\n".join(good).encode(rng.choice(["utf-16", "latin-1", "cp1252", "utf-32"]))
    elif kind == 2:
        whole = "\n".join(good).encode()
        data = whole[: rng.randrange(1, len(whole))]
    elif kind == 3:  # a valid line with a random JSON value in a random field
        rec = json.loads(good[0])
        rec[rng.choice(["prompt", "candidates", "label", "answers"])] = rng.choice(
            [None, 1.5, -3, 10**30, "", [], {}, True, ["x"], "1", [1, 2]])
        data = ("\n".join(good[1:] + [json.dumps(rec)])).encode()
    elif kind == 4:  # a byte flipped in valid data
        data = bytearray("\n".join(good).encode())
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        data = bytes(data)
    else:
        data = "\n".join(good).encode()
    path.write_bytes(data)
    return data


def test_random_data_files_load_or_name_the_file_and_line(tmp_path, capsys, monkeypatch):
    rng = random.Random(SEED + 1)
    for case in range(120):
        path = tmp_path / f"data{case}.jsonl"
        _data_file(rng, path)
        try:
            examples = read_jsonl(path, "classification", [])
        except ZorunError as err:
            msg = str(err)
            assert "\n" not in msg and (msg.startswith(f"{path}:") or msg.startswith(f"task.path={path}")), msg
        else:
            assert all(e.label in (0, 1) and len(e.candidates) >= 2 for e in examples)
    for case in range(3):  # the same files through the command line: refused before a run directory exists
        path = tmp_path / f"cli{case}.jsonl"
        _data_file(random.Random(SEED + 100 + case), path)
        out = tmp_path / f"out{case}"
        code = command([*BASE, "task=local", f"task.path={path}", f"hydra.run.dir={out}"], capsys, monkeypatch)
        assert code == 0 or not out.exists()


# ------------------------------------------------------------- checkpoints
def _damage(rng: random.Random, ckpt: Path) -> str:
    name = rng.choice([PARAMS, STATE, META, SUMS])
    path = ckpt / name
    data = bytearray(path.read_bytes())
    if rng.random() < 0.3:
        path.write_bytes(bytes(data[: rng.randrange(len(data))]))
        return f"truncated {name}"
    for _ in range(rng.randrange(1, 4)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return f"flipped {name}"


def test_random_truncations_and_bit_flips_of_checkpoints_never_load(base_cfg, finished, tmp_path, capsys,
                                                                  monkeypatch):
    rng = random.Random(SEED + 2)
    space = ParamSpace.from_model(load_model(base_cfg.model, base_cfg.seed))
    for case in range(40):
        run = Path(shutil.copytree(finished, tmp_path / f"run{case}"))  # new inodes: nothing cached
        ckpt = run / "checkpoints" / "step-00000004"
        what = _damage(rng, ckpt)
        try:
            opened = Checkpoint.open(ckpt)
            opened.load_params(space)
            opened.load_state()
        except CheckpointError as err:
            msg = str(err)
            assert "\n" not in msg and str(ckpt) in msg, (what, msg)
            assert "step-00000002, the previous checkpoint" in msg, (what, msg)
        else:
            pytest.fail(f"a checkpoint with a {what} loaded")
        if case < 3:  # through the command line: refused, and the directory is left as it is
            before = tree(run)
            assert command([f"resume={run}"], capsys, monkeypatch) == 2
            assert tree(run) == before
