"""Blocks and layers: tied weights once, layer ids from parameter names, decay flags."""

from __future__ import annotations


from conftest import tiny_llama
from zorun.params import ParamSpace


def test_tiny_llama_blocks_and_layers():
    model = tiny_llama(layers=3)
    space = ParamSpace.from_model(model)
    names = [b.name for b in space.blocks]
    assert "lm_head.weight" not in names  # tied to the embedding: counted once
    assert space.numel == sum(p.numel() for p in model.parameters())
    layer = {b.name: b.layer for b in space.blocks}
    assert layer["model.embed_tokens.weight"] == 0
    assert layer["model.layers.0.self_attn.q_proj.weight"] == 1
    assert layer["model.layers.2.mlp.down_proj.weight"] == 3
    assert layer["model.norm.weight"] == 4 == space.num_layers - 1
    assert sorted(i for ids in space.layer_blocks for i in ids) == list(range(len(space)))


def test_frozen_parameters_are_not_blocks():
    model = tiny_llama()
    for name, p in model.named_parameters():
        p.requires_grad_("layers.0." in name)
    space = ParamSpace.from_model(model)
    assert all("layers.0." in b.name for b in space.blocks)
    assert space.num_layers == 1 and space.blocks[0].layer == 0


def test_empty_space_is_refused():
    model = tiny_llama()
    model.requires_grad_(False)
    try:
        ParamSpace.from_model(model)
    except ValueError as err:
        assert "no trainable parameters" in str(err)
    else:
        raise AssertionError("expected ValueError")
