"""PertNN networks on disk: safetensors + JSON metadata, name mapping, bad files, the pickle importer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama
from safetensors.torch import save_file

from zorun.params import ParamSpace
from zorun.commands import pertnn as pertnn_command
from zorun.samplers import pertnn_io
from zorun.samplers.pertnn import BlockNets
from zorun.samplers.pertnn_io import PertNNCheckpointError, load_for_space, read, save

PEFT_RULES = [r"^base_model\.model\.=>", r"\.base_layer\.=>."]  # the mapping docs/pertnn.md gives for peft


def space_and_nets():
    space = ParamSpace.from_model(tiny_llama(hidden=16, layers=1, vocab=64))
    return space, BlockNets(len(space), generator=torch.Generator().manual_seed(1))


def saved(tmp_path, space, nets, **kw) -> Path:
    return save(tmp_path / "nets.safetensors", nets, [b.name for b in space.blocks],
                [list(b.tensor.shape) for b in space.blocks], base_model="tiny", source="test", **kw)


def test_round_trip_keeps_every_network_and_the_metadata(tmp_path):
    space, nets = space_and_nets()
    path = saved(tmp_path, space, nets, normalize=False, embed_tokens=7)
    meta, _ = read(path)
    assert meta["format"] == "zorun-pertnn" and meta["version"] == 1 and meta["base_model"] == "tiny"
    assert meta["features"] == ["mean", "var", "loss_plus", "loss_minus", "sigma_prev"]
    assert meta["normalisation"] == {"normalize": False, "embed_tokens": 7}
    assert [b["name"] for b in meta["blocks"]] == [b.name for b in space.blocks]
    loaded = load_for_space(path, space)
    for (k, a), b in zip(nets.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def peft_style(space: ParamSpace) -> ParamSpace:
    """The same tensors under the names a peft-wrapped model gives them."""
    def rename(name):
        return "base_model.model." + name.replace("q_proj.weight", "q_proj.base_layer.weight")
    return ParamSpace([(rename(b.name), b.tensor) for b in space.blocks])


def test_mismatched_names_are_one_line_listing_missing_and_extra_and_a_mapping_fixes_them(tmp_path):
    space, nets = space_and_nets()
    path = saved(tmp_path, space, nets)
    wrapped = peft_style(space)
    with pytest.raises(PertNNCheckpointError) as err:
        load_for_space(path, wrapped)
    message = str(err.value)
    assert "\n" not in message and "sampler.rename" in message
    n = len(space)
    assert f"missing {n} [base_model.model.model.embed_tokens.weight," in message and "(+" in message
    assert f"extra {n} [model.embed_tokens.weight," in message
    loaded = load_for_space(path, wrapped, PEFT_RULES)
    assert all(torch.equal(a, b) for a, b in zip(nets.state_dict().values(), loaded.state_dict().values()))
    base_to_instruct = ParamSpace([(b.name.replace("model.", "instruct.", 1), b.tensor) for b in space.blocks])
    load_for_space(path, base_to_instruct, [r"^instruct\.=>model."])


def test_networks_for_another_shape_are_refused(tmp_path):
    space, nets = space_and_nets()
    path = saved(tmp_path, space, nets)
    other = ParamSpace.from_model(tiny_llama(hidden=32, layers=1, vocab=64))
    with pytest.raises(PertNNCheckpointError, match=r"was trained for shape \[64, 16\], the model's "
                                                     r"'model.embed_tokens.weight' is \[64, 32\]"):
        load_for_space(path, other)


def rewrite(path: Path, tensors=None, meta=None) -> Path:
    """The file rewritten with its tensors and/or metadata replaced."""
    old_meta, old_tensors = read(path)
    out = path.with_name("bad.safetensors")
    save_file(tensors if tensors is not None else old_tensors, str(out),
              metadata=None if meta == {} else {"zorun_pertnn": json.dumps(meta if meta is not None else old_meta)})
    return out


@pytest.mark.parametrize("damage, message", [
    ("absent", "does not exist; meta-train networks with zorun-metatrain"),
    ("garbage", "is not a safetensors file"),
    ("no-metadata", "has no 'zorun_pertnn' JSON metadata"),
    ("version", "is format zorun-pertnn version 9; this zorun reads zorun-pertnn version 1"),
    ("features", "zorun's networks take"),
    ("tensor", "lacks 2.weight of shape (1, 64)"),
    ("rule", "sampler.rename rule 'no arrow' is not 'REGEX=>REPLACEMENT'"),
])
def test_bad_checkpoints_are_one_line(tmp_path, damage, message):
    space, nets = space_and_nets()
    path, rules = saved(tmp_path, space, nets), []
    meta, tensors = read(path)
    if damage == "absent":
        path = tmp_path / "nope.safetensors"
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 64)
    elif damage == "no-metadata":
        path = rewrite(path, meta={})
    elif damage in ("version", "features"):
        path = rewrite(path, meta={**meta, **({"version": 9} if damage == "version" else {"features": ["mean"]})})
    elif damage == "tensor":
        path = rewrite(path, tensors={k: v for k, v in tensors.items() if not k.endswith("2.weight")})
    else:
        rules = ["no arrow"]
    with pytest.raises(PertNNCheckpointError) as err:
        load_for_space(path, space, rules)
    assert message in str(err.value) and "\n" not in str(err.value)


def released(space: ParamSpace):
    """What the authors ship: a pickled dict block name -> nn.Sequential(Linear(5, 64), Tanh, Linear(64, 1))."""
    torch.manual_seed(0)
    return {b.name: torch.nn.Sequential(torch.nn.Linear(5, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
            for b in space.blocks}


def test_importer_refuses_without_trust_then_converts_to_the_same_sigma(tmp_path, capsys):
    """`zorun-pertnn import` (its main, in this process)."""
    space, _ = space_and_nets()
    modules = released(space)
    src, out = tmp_path / "opt30B_finetuner.pth", tmp_path / "imported.safetensors"
    torch.save(modules, src)
    with pytest.raises(SystemExit) as code:
        pertnn_command.main(["import", str(src), str(out)])
    err = capsys.readouterr().err.strip()
    assert code.value.code == 2 and not out.exists() and "\n" not in err
    assert err.startswith("zorun-pertnn: error: refusing to load") and "unpickling runs" in err and "--trust-pickle" in err
    pertnn_command.main(["import", str(src), str(out), "--trust-pickle", "--base-model", "facebook/opt-30b"])
    assert "use with: zorun sampler=pertnn sampler.checkpoint=" in capsys.readouterr().out
    meta, _ = read(out)
    assert meta["source"] == "import" and meta["base_model"] == "facebook/opt-30b"
    nets = load_for_space(out, space)
    x = torch.randn(len(space), 5)
    with torch.no_grad():
        expected = torch.stack([modules[b.name](x[b.id]).abs()[0] for b in space.blocks])
        torch.testing.assert_close(nets(x), expected, rtol=1e-6, atol=1e-7)


def test_importer_refuses_other_pickled_structures(tmp_path):
    src = tmp_path / "wrong.pth"
    torch.save({"w": torch.nn.Linear(5, 64)}, src)
    with pytest.raises(pertnn_io.ZorunError, match=r"entry 'w' is not nn.Sequential\(Linear\(5, 64\), Tanh"):
        pertnn_io.import_released(src, tmp_path / "out.safetensors", trust_pickle=True, base_model="x")
