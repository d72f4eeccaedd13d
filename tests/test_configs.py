"""Every shipped config: each option of each group composes onto its schema and passes the checks,
and each YAML starts with a header that says what it is for and how to launch it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from zorun.config import validate
from zorun.paths import CONF_DIR
from zorun.registry import check_combination

CONF = Path(CONF_DIR)
SWEEPS = CONF.parent / "sweeps"
ROOTS = ("config", "metatrain")
# What an option needs beyond its own YAML to make a runnable config.
NEEDS = {("task", "local"): ["task.path=data.jsonl"]}
VARIANTS = {("estimator", "fo-sgd-teacher"): "fo-sgd"}  # options that configure another option's method
EXAMPLE = re.compile(r"^# (Example|Launch): zorun(-[a-z]+)? ")


def options():
    return [(p.parent.name, p.stem) for p in sorted(CONF.glob("*/*.yaml"))]


def root_groups() -> set:
    """The groups conf/config.yaml's defaults list chooses (the others are added with +group=option)."""
    defaults = yaml.safe_load((CONF / "config.yaml").read_text())["defaults"]
    return {next(iter(d)) for d in defaults if isinstance(d, dict)}


def header(path: Path):
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[: next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))]


@pytest.mark.parametrize("group, option", options(), ids=lambda x: x)
def test_every_option_composes_and_passes_the_checks(compose, group, option):
    prefix = "" if group in root_groups() else "+"
    cfg = compose(f"{prefix}{group}={option}", *NEEDS.get((group, option), []))
    assert group in cfg and cfg[group] is not None
    if "name" in cfg[group]:
        assert cfg[group].name == VARIANTS.get((group, option), option), "the option's name picks its method"
    validate(cfg)
    check_combination(cfg)


@pytest.mark.parametrize("name", ROOTS)
def test_root_configs_compose(compose, name):
    cfg = compose(name=name)
    validate(cfg)


def test_all_groups_have_options():
    assert {g for g, _ in options()} >= {"model", "task", "estimator", "sampler", "budget", "logger"}


@pytest.mark.parametrize("path", sorted(CONF.rglob("*.yaml")) + sorted(SWEEPS.glob("*.yaml")),
                         ids=lambda p: str(p.relative_to(CONF.parent)))
def test_every_shipped_yaml_says_what_it_is_for_and_how_to_launch_it(path):
    head = header(path)
    examples = [line for line in head if EXAMPLE.match(line)]
    purpose = [line for line in head if not EXAMPLE.match(line) and len(line.strip("# ")) > 10]
    assert examples, f"{path.name}: no '# Example: zorun ...' line in the header comment"
    assert purpose and head.index(purpose[0]) < head.index(examples[0]), \
        f"{path.name}: the header starts with what the file is for, before the example"
