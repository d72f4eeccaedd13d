"""model.peft=lora|prefix: ZO trains the adapter alone, layer by layer, and the result loads back with peft."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from peft import PeftModel

from conftest import read_summary
from zorun.paths import CONF_DIR
from zorun.models import load_model
from zorun.models.adapters import ADAPTER_DIR
from zorun.params import ParamSpace


def model_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides)).model


def test_lora_defaults_are_mezos_and_only_adapters_train():
    model = load_model(model_cfg("model.peft=lora"), seed=0)
    space = ParamSpace.from_model(model)
    config = model.active_peft_config
    assert (config.r, config.lora_alpha, sorted(config.target_modules)) == (8, 16, ["q_proj", "v_proj"])
    assert all(".lora_A." in b.name or ".lora_B." in b.name for b in space.blocks)
    assert len(space) == 2 * 2 * 2  # 2 layers x {q, v} x {A, B}
    # each adapter in the layer of the transformer block it adapts: adalezo draws layers of adapters
    assert space.layer_blocks == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize("arch, targets", [
    (dict(model_type="opt", hidden_size=16, ffn_dim=32, word_embed_proj_dim=16, num_attention_heads=2), ["q_proj", "v_proj"]),
    (dict(model_type="gpt2", n_embd=16, n_head=2), ["c_attn"]),
    (dict(model_type="qwen2", hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=2),
     ["q_proj", "v_proj"]),
])
def test_lora_targets_the_query_and_value_projections_of_each_architecture(arch, targets):
    from zorun.models.adapters import wrap
    from conftest import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**arch, vocab_size=64, num_hidden_layers=2, **(
        {"n_layer": 2} if arch["model_type"] == "gpt2" else {}))
    model = wrap(AutoModelForCausalLM.from_config(config), model_cfg("model.peft=lora"), seed=0)
    space = ParamSpace.from_model(model)
    adapted = sorted({b.name.split(".lora_")[0].rsplit(".", 1)[1] for b in space.blocks})
    assert adapted == targets
    assert [len(ids) for ids in space.layer_blocks] == [2 * len(targets)] * 2  # (A, B) per target, per layer


def test_prefix_is_one_block_per_layer_with_peft_s_numbers():
    cfg = model_cfg("model.peft=prefix")
    model = load_model(cfg, seed=0)
    space = ParamSpace.from_model(model)
    assert [b.layer for b in space.blocks] == [0, 1]
    assert [tuple(b.tensor.shape) for b in space.blocks] == [(5, 2 * 64)] * 2  # 5 tokens x (key, value) x hidden
    # the layer-wise blocks are peft's own prefix, split by columns: same init, same forward
    torch.manual_seed(0)
    from peft import PrefixTuningConfig, get_peft_model

    cfg_plain = OmegaConf.merge(cfg, {"peft": "none"})
    plain = get_peft_model(load_model(cfg_plain, seed=0), PrefixTuningConfig(task_type="CAUSAL_LM",
                                                                               num_virtual_tokens=5)).eval()
    ids = torch.randint(4, 600, (2, 9), generator=torch.Generator().manual_seed(1))
    plain.prompt_encoder["default"].embedding.weight.data.copy_(torch.cat([b.tensor for b in space.blocks], 1))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("kind, sampler", [("lora", "adalezo"), ("prefix", "uniform"), ("lora", "ldsd")])
def test_only_adapter_parameters_change(kind, sampler, tmp_path):
    from zorun.run import Run

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"model.peft={kind}", f"sampler={sampler}", "budget=smoke",
                                           "budget.steps=3", "task.num_train=32", "task.num_dev=0", "task.num_test=0",
                                           "logger=none", "estimator.lr=1e-2", "budget.checkpoint_every=0"])
    run = Run(cfg, str(tmp_path))
    run.setup()
    before = {n: p.detach().clone() for n, p in run.stack.model.named_parameters()}
    run.train()
    run.cleanup()
    changed = {n for n, p in run.stack.model.named_parameters() if not torch.equal(p, before[n])}
    adapters = {n for n, p in run.stack.model.named_parameters() if p.requires_grad}
    assert changed and changed <= adapters, changed - adapters
    assert len(adapters) < len(before)


def test_a_module_name_that_matches_nothing_is_one_line():
    from zorun.errors import ZorunError

    with pytest.raises(ZorunError, match=r"model.peft=lora does not apply to model=tiny .*model.lora.target_modules"):
        load_model(model_cfg("model.peft=lora", "model.lora.target_modules=[c_attn]"), seed=0)


def test_lora_and_prefix_train_under_mezo_and_adalezo_and_load_back_with_peft(cli, tmp_path):
    """A smoke multirun over {lora, prefix} x {mezo/uniform, mezo/adalezo}: the adapters move, the base
    model does not (its parameters are never ZO blocks), and the saved adapter reproduces the trained model."""
    proc = cli("-m", "model.peft=lora,prefix", "sampler=uniform,adalezo", "budget=smoke", "budget.steps=6",
               "task.num_train=64", "task.num_dev=8", "task.num_test=8", "logger=none", "estimator.lr=1e-2",
               "budget.checkpoint_every=6", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.parent for p in tmp_path.glob("*/summary.json"))
    assert len(jobs) == 4
    for job in jobs:
        summary = read_summary(job)
        assert summary["status"] == "completed" and summary["steps"] == 6, job.name
        cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
        base = load_model(cfg.model, cfg.seed)  # as the run started: same seed, same adapter init
        trained = PeftModel.from_pretrained(load_model(OmegaConf.merge(cfg.model, {"peft": "none"}), cfg.seed),
                                            str(job / ADAPTER_DIR)).eval()
        saved = ParamSpace.from_model(base)
        from safetensors.torch import load_file

        ckpt = load_file(str(job / "checkpoints" / "step-00000006" / "params.safetensors"))
        assert sorted(ckpt) == sorted(b.name for b in saved.blocks), "checkpoints hold the adapter only"
        moved = [float((ckpt[b.name] - b.tensor).abs().max()) for b in saved.blocks]
        assert max(moved) > 1e-4, job.name
        if "adalezo" in job.name:
            active = [json.loads(line)["active"] for line in (job / "adalezo.jsonl").read_text().splitlines()]
            assert all(len(a) == 1 for a in active), "k = max(1, 0.2 x 2 layers): one adapter layer per step"
        # the reloaded peft model computes what the trained blocks compute
        for b in saved.blocks:
            b.tensor.data.copy_(ckpt[b.name])
        ids = torch.randint(4, 600, (2, 9), generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            torch.testing.assert_close(trained(input_ids=ids).logits, base(input_ids=ids).logits,
                                       rtol=0, atol=1e-6)
