"""Layer grouping by parameter name (ParamSpace) on random-init tiny OPT, LLaMA, Qwen2, GPT-2 and Mistral.

AdaLeZO's arms are these layers: embeddings = layer 0, transformer block i = layer i + 1,
everything else (final norm, untied head, OPT's project_in/out) = the last layer; tied weights once.
"""

from __future__ import annotations

import re

import pytest
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM

from zorun.params import ParamSpace
from zorun.samplers.adalezo import AdaLeZOSampler, AdaLeZOSamplerConfig

BLOCKS = 3
DECODER = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=BLOCKS,
               num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
ARCHS = {
    "opt": dict(model_type="opt", vocab_size=64, hidden_size=16, word_embed_proj_dim=16, ffn_dim=32,
                num_hidden_layers=BLOCKS, num_attention_heads=2, max_position_embeddings=32),
    "opt-project": dict(model_type="opt", vocab_size=64, hidden_size=16, word_embed_proj_dim=8, ffn_dim=32,
                        num_hidden_layers=BLOCKS, num_attention_heads=2, max_position_embeddings=32,
                        do_layer_norm_before=False),  # OPT-350M's shape: project_in / project_out
    "llama": dict(model_type="llama", tie_word_embeddings=False, **DECODER),
    "qwen2": dict(model_type="qwen2", tie_word_embeddings=True, **DECODER),
    "mistral": dict(model_type="mistral", tie_word_embeddings=False, **DECODER),
    "gpt2": dict(model_type="gpt2", vocab_size=64, n_embd=16, n_layer=BLOCKS, n_head=2, n_positions=32,
                 bos_token_id=0, eos_token_id=0),
}
BLOCK_RE = re.compile(r"\.(?:layers|h)\.(\d+)\.")
EMBED_NAMES = {"opt": 2, "opt-project": 2, "llama": 1, "qwen2": 1, "mistral": 1, "gpt2": 2}  # tokens (+ positions)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_layers_of_each_architecture(arch):
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**ARCHS[arch]))
    space = ParamSpace.from_model(model)
    last = BLOCKS + 1
    assert space.num_layers == BLOCKS + 2
    for block in space.blocks:
        match = BLOCK_RE.search(block.name)
        if match:
            assert block.layer == int(match.group(1)) + 1, block.name
        elif re.search(r"embed|wte|wpe", block.name):
            assert block.layer == 0, block.name
        else:
            assert block.layer == last, block.name
    assert len(space.layer_blocks[0]) == EMBED_NAMES[arch]
    assert all(space.layer_blocks[i] for i in range(space.num_layers))
    # tied weights appear once: one block per distinct tensor, and a tied head is not a block of its own
    tensors = {id(p) for p in model.parameters()}
    assert len(space) == len(tensors) == len({b.tensor.data_ptr() for b in space.blocks})
    head_names = [b.name for b in space.blocks if "lm_head" in b.name]
    assert head_names == ([] if model.config.tie_word_embeddings else ["lm_head.weight"])
    sampler = AdaLeZOSampler(OmegaConf.structured(AdaLeZOSamplerConfig(k_ratio=0.4)), space, 0)
    assert sampler.k == 2 and sampler.rewards.numel() == BLOCKS + 2
