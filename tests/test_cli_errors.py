"""Bad input stops before any model loads: one line naming the key and the fix, exit 2, no traceback."""

from __future__ import annotations

import pytest

from zorun.commands import cli as zcli
from zorun.errors import ZorunError
from zorun.tasks.local import read_jsonl

BAD = [
    (["sampler=nope"], "unknown sampler 'nope'", "uniform"),
    (["model=gpt-9"], "unknown model 'gpt-9'", "opt-13b"),
    (["estimator.lrr=1"], "unknown key 'estimator.lrr'", "--cfg job"),
    (["+model.foo=1"], "unknown key 'model.foo'", "--cfg job"),
    (["+foo=1"], "unknown key 'foo'", "--cfg job"),
    (["budget.steps=abc"], "budget.steps", "could not be converted to Integer"),
    (["model.dtype=int8"], "model.dtype", "float32, bfloat16, float16"),
    (["estimator.lr=0"], "estimator.lr=0", "must be > 0"),
    (["estimator.lr=-1e-3"], "estimator.lr=-0.001", "must be > 0"),
    (["estimator.eps=0"], "estimator.eps=0", "must be > 0"),
    (["budget.steps=-1"], "budget.steps=-1", "must be >= 0"),
    (["budget.batch_size=0"], "budget.batch_size=0", "must be >= 1"),
    (["task=local"], "task=local needs task.path", "jsonl"),
    (["-m", "seed=0,1", "estimator.lr=1e-3,-1"], "estimator.lr=-1", "must be > 0"),
]


@pytest.mark.parametrize("argv,names,fix", BAD, ids=[" ".join(a) for a, _, _ in BAD])
def test_bad_config_is_one_line_exit_2(argv, names, fix, capsys):
    with pytest.raises(SystemExit) as exc:
        zcli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("zorun: error: ")
    assert names in err and fix in err, err


def test_subprocess_exit_code_and_no_traceback(cli, tmp_path):
    proc = cli("sampler=nope", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    options = ", ".join(zcli.group_options("sampler"))
    assert proc.stderr.strip().splitlines() == [
        f"zorun: error: unknown sampler 'nope': choose sampler=<one of: {options}>"
    ]
    assert not (tmp_path / "summary.json").exists()  # refused before any run started


BAD_LINES = [
    (['{"prompt": "a", "candidates": ["x", "y"], "label": 0}', '{"prompt": "b", "candidates": '],
     ":2: malformed JSON"),
    (['{"prompt": "a", "candidates": ["x", "y"], "label": 0}', '{"candidates": ["x", "y"], "label": 1}'],
     ":2: missing field 'prompt'"),
    (['{"prompt": "a", "candidates": ["x", "y"]}'], ":1: missing field 'label'"),
    (['{"prompt": "a", "candidates": ["x", "y"], "label": 0}', '{"prompt": "b", "candidates": ["x", "y"], "label": 2}'],
     ":2: label 2 is out of range for 2 candidates"),
    (['{"prompt": "a", "label": 0}'], ":1: missing field 'candidates'"),
    (['[1, 2]'], ":1: expected a JSON object"),
]


@pytest.mark.parametrize("lines,expect", BAD_LINES, ids=[e for _, e in BAD_LINES])
def test_bad_local_data_names_file_and_line(tmp_path, lines, expect):
    data = tmp_path / "mine.jsonl"
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(ZorunError) as exc:
        read_jsonl(data, "classification", [])
    assert str(exc.value).startswith(f"{data}{expect}")
    assert "\n" not in str(exc.value)


def test_bad_local_data_through_cli(cli, tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text('{"prompt": "a", "candidates": ["x", "y"], "label": 0}\n{"prompt": "b", "label": 5}\n')
    out = tmp_path / "run"
    proc = cli("task=local", f"task.path={data}", "budget=smoke", f"hydra.run.dir={out}")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    err_lines = [l for l in proc.stderr.splitlines() if l.startswith("zorun: error:")]
    assert len(err_lines) == 1 and f"{data}:2: missing field 'candidates'" in err_lines[0], proc.stderr
    assert not out.exists()  # the pre-flight reads the file as the run would: refused before Hydra starts


def test_missing_model_offline_is_one_line(cli, tmp_path):
    proc = cli("model=opt-125m", "budget=smoke", f"hydra.run.dir={tmp_path}",
               env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    line = [l for l in proc.stderr.splitlines() if l.startswith("zorun: error:")]
    assert len(line) == 1 and "model=opt-125m" in line[0] and "model.path" in line[0], proc.stderr


def test_help_lists_groups_and_options(capsys):
    zcli.main(["--help"])
    out = capsys.readouterr().out
    for group in ("model", "task", "estimator", "sampler", "budget", "logger"):
        assert f"  {group} " in out
    assert "opt-30b" in out and "uniform*" in out and "mezo*" in out
