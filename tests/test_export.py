"""The fine-tuned model in the form users load: model/ at the end of a run, and zorun-export from a checkpoint
or from the trajectory log alone; the logits of the loaded folder equal the run's final parameters."""

from __future__ import annotations

import shutil
import signal

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from zorun.paths import CONF_DIR
from zorun.commands.export import main as export_main
from zorun.run import Run

SMALL = ["logger=none", "logger.progress=false", "task.num_train=32", "task.num_dev=8", "task.num_test=8",
         "budget.batch_size=4", "budget.log_every=1"]


def make_run(out_dir, *overrides: str) -> Run:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[*SMALL, *overrides])
    return Run(cfg, str(out_dir))


def run_to_end(out_dir, *overrides: str) -> Run:
    """A run in this process, with the .hydra/config.yaml that Hydra writes for one launched by `zorun`."""
    run = make_run(out_dir, *overrides)
    (run.out_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(run.cfg, run.out_dir / ".hydra" / "config.yaml")
    run.setup()
    run.train()
    assert run.cleanup()["status"] == "completed"
    return run


def logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer("the film was great . It was", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def load(folder) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight, "tied weights stay tied"
    return model


def test_a_full_parameter_run_writes_model_and_exports_equal_it(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run = run_to_end(run_dir, "budget.steps=6", "budget.checkpoint_every=3")
    expected = logits(run.stack.model, run.stack.tokenizer)
    assert (run_dir / "model" / "model.safetensors").is_file() and (run_dir / "model" / "tokenizer.json").is_file()
    assert torch.equal(logits(load(run_dir / "model"), run.stack.tokenizer), expected)
    assert not torch.equal(expected, logits(_base_model(), run.stack.tokenizer))  # the steps changed the model

    export_main([str(run_dir), "--out", str(tmp_path / "from-checkpoint")])  # step 6 has a checkpoint
    assert "step 6 (from checkpoint step-00000006)" in capsys.readouterr().out
    assert torch.equal(logits(load(tmp_path / "from-checkpoint"), run.stack.tokenizer), expected)

    shutil.rmtree(run_dir / "checkpoints" / "step-00000006")  # the newest checkpoint, then the log's last 3 steps
    export_main([str(run_dir), "--out", str(tmp_path / "from-step-3")])
    assert "replaying 3 steps (3..5) of trajectory.jsonl from checkpoint step 3" in capsys.readouterr().out
    assert torch.equal(logits(load(tmp_path / "from-step-3"), run.stack.tokenizer), expected)

    shutil.rmtree(run_dir / "checkpoints")  # the trajectory alone, from the base model
    export_main([str(run_dir)])
    printed = capsys.readouterr().out
    assert "replaying 6 steps (0..5) of trajectory.jsonl from the base model" in printed
    assert torch.equal(logits(load(run_dir / "export" / "step-6"), run.stack.tokenizer), expected)


def _base_model():
    """The tiny model as a run starts from it (seed 0)."""
    from zorun.models import load_model

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return load_model(compose("config").model, seed=0)


def test_export_of_an_earlier_step_and_its_errors(tmp_path, capsys):
    run_dir = tmp_path / "run"
    tokenizer = run_to_end(run_dir, "budget.steps=4", "budget.checkpoint_every=2", "budget.keep_checkpoints=3",
                           "budget.save_model=false").stack.tokenizer
    assert not (run_dir / "model").exists()
    export_main([str(run_dir), "--step", "2", "--out", str(tmp_path / "ckpt")])
    shutil.rmtree(run_dir / "checkpoints")
    export_main([str(run_dir), "--step", "2", "--out", str(tmp_path / "replayed")])
    assert torch.equal(logits(load(tmp_path / "ckpt"), tokenizer), logits(load(tmp_path / "replayed"), tokenizer))
    capsys.readouterr()
    for argv, message in ((["--step", "9"], "holds steps 0..4"), (["--out", str(tmp_path / "ckpt")], "not empty")):
        with pytest.raises(SystemExit) as exit_info:
            export_main([str(run_dir), *argv])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("zorun-export: error:") and message in err and err.count("\n") == 1


def test_lora_keeps_its_adapter_and_writes_the_merged_model_on_request(tmp_path):
    run_dir = tmp_path / "lora"
    run = run_to_end(run_dir, "model.peft=lora", "budget.steps=3", "budget.checkpoint_every=0",
                     "budget.save_merged=true", "estimator.lr=0.05")
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    merged = load(run_dir / "model")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    # the run's model is the merged one now (the merge comes last): the folder holds it exactly
    assert torch.equal(logits(merged, run.stack.tokenizer), logits(run.stack.model, run.stack.tokenizer))


def test_save_merged_without_lora_is_refused_in_one_line(cli):
    result = cli("budget.save_merged=true", "model.peft=prefix", "logger=none")
    assert result.returncode == 2
    assert result.stderr.startswith("zorun: error: budget.save_merged=true") and result.stderr.count("\n") == 1


def test_budget_smoke_writes_no_model_and_no_checkpoint_when_stopped(tmp_path):
    """At real shapes a smoke run's checkpoint or model folder would be gigabytes: it writes neither."""
    done = run_to_end(tmp_path / "done", "budget=smoke", "budget.steps=2")
    assert not (done.out_dir / "model").exists() and done.summary()["steps"] == 2
    run = make_run(tmp_path / "stopped", "budget=smoke")
    run.setup()
    run.signals.received = signal.SIGTERM  # as the handler sets it: the loop stops before its next step
    run.train()
    assert run.cleanup()["status"] == "stopped"
    assert not (tmp_path / "stopped" / "checkpoints").exists()
