"""A plain (non-editable) wheel install carries the configs, sweeps and shipped networks: `zorun --cfg job` works outside the repo."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

from conftest import ROOT


def test_wheel_ships_configs_and_runs_outside_the_repo(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(ROOT)], check=True, capture_output=True, text=True)
    (wheel,) = wheels.glob("zorun-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "zorun/conf/config.yaml" in names and "zorun/conf/model/opt-30b.yaml" in names
    assert "zorun/sweeps/smoke.yaml" in names and "zorun/networks/tiny.safetensors" in names

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, text=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = subprocess.run([sys.executable, "-c", "import zorun.commands.cli as c; print(c.CONF_DIR)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == str(target / "zorun" / "conf")
    cfg = subprocess.run([sys.executable, "-m", "zorun", "--cfg", "job", "model=opt-30b", "sampler=uniform"],
                         cwd=elsewhere, env=env, capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stderr
    assert "hf_id: facebook/opt-30b" in cfg.stdout and "num_hidden_layers: 48" in cfg.stdout
    pertnn = subprocess.run([sys.executable, "-m", "zorun", "--cfg", "job", "sampler=pertnn"],  # the shipped networks
                            cwd=elsewhere, env=env, capture_output=True, text=True)
    assert pertnn.returncode == 0, pertnn.stderr
