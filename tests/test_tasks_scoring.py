"""Batched evaluation against one-at-a-time scoring, truncation, and SQuAD F1/EM by hand."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PrefixTuningConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from zorun.models.tokenizer import build_tiny_tokenizer
from zorun.tasks.base import Example
from zorun.tasks.metrics import squad_scores
from zorun.tasks.scoring import (_mean_per_row, candidate_scores, encode, evaluate_classification, fit_prompt,
                                 greedy_generate, shared_prompt_scores, shares_prompt, token_logprobs)

MAX_LENGTH = 64
# initializer_range 0.5 spreads the random logits, so no argmax rests on a float near-tie
ARCHS = {
    "llama": dict(model_type="llama", vocab_size=640, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_LENGTH,
                  initializer_range=0.5),
    "opt": dict(model_type="opt", vocab_size=640, hidden_size=32, word_embed_proj_dim=32, ffn_dim=64,
                num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=MAX_LENGTH, init_std=0.5),
}


def tiny(arch: str):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(**ARCHS[arch])).eval()


def examples():
    """Prompts of many lengths (one longer than the context), 2-4 candidates of 1-6 tokens."""
    words = "good bad river table happy cold seven morning".split()
    out = []
    for i in range(13):
        prompt = " ".join(words[(i + k) % 8] for k in range(1 + 6 * i)) + " . It was"
        cands = [" great", " terrible", "\nYes it was", " a calm stone letter"][: 2 + i % 3]
        out.append(Example(prompt=prompt, candidates=cands, label=i % len(cands)))
    return out


def one_at_a_time(model, tok, exs):
    return [candidate_scores(model, encode(tok, [ex], MAX_LENGTH))[0] for ex in exs]


class PlainForward(torch.nn.Module):
    """A model whose forward takes no cache or positions (e.g. a wrapper): the flat path must serve it."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


@pytest.mark.parametrize("arch", sorted(ARCHS))
@torch.no_grad()
def test_batched_evaluation_equals_one_at_a_time(arch):
    tok, model, exs = build_tiny_tokenizer(), tiny(arch), examples()
    assert len(tok(exs[-1].prompt)["input_ids"]) > MAX_LENGTH  # the left truncation is exercised
    single = one_at_a_time(model, tok, exs)
    assert shares_prompt(model) and not shares_prompt(PlainForward(model))
    shared = shared_prompt_scores(model, tok, exs, MAX_LENGTH, "cpu")
    flat = candidate_scores(model, encode(tok, exs, MAX_LENGTH))
    for row_shared, row_flat, one in zip(shared, flat, single):
        n = len(one)
        torch.testing.assert_close(row_shared[:n], one, atol=1e-5, rtol=0)
        torch.testing.assert_close(row_flat[:n], one, atol=1e-5, rtol=0)
        assert torch.isinf(row_shared[n:]).all()
    expected = sum(ex.is_correct(int(s.argmax())) for ex, s in zip(exs, single)) / len(exs)
    assert 0 < expected < 1  # the comparison means something
    for m in (model, PlainForward(model)):
        got = evaluate_classification(m, tok, exs, MAX_LENGTH, batch_size=5, device="cpu")
        assert got["accuracy"] == expected


@torch.no_grad()
def test_peft_models_share_the_prompt_unless_prefix_tuned():
    tok, exs = build_tiny_tokenizer(), examples()
    lora = get_peft_model(tiny("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    assert shares_prompt(lora)
    flat = candidate_scores(lora, encode(tok, exs, MAX_LENGTH))
    shared = shared_prompt_scores(lora, tok, exs, MAX_LENGTH, "cpu")
    torch.testing.assert_close(shared, flat, atol=1e-5, rtol=0)
    assert not shares_prompt(get_peft_model(tiny("llama"), PrefixTuningConfig(task_type="CAUSAL_LM",
                                                                               num_virtual_tokens=3)))


def one_token_examples(tok):
    """Examples whose 2-3 candidates are each a single token, prompts of many lengths."""
    singles = [w for w in (" good", " bad", " river", " table", " cold") if len(tok(w, add_special_tokens=False)["input_ids"]) == 1]
    assert len(singles) >= 3
    return [Example(prompt=" ".join(["seven morning happy"] * (1 + i)) + " . It was", candidates=singles[: 2 + i % 2],
                    label=i % 2) for i in range(9)]


def flat_scores(model, enc):
    """The general path: every (prompt + candidate) sequence, its answer tokens' mean log-likelihood."""
    lp, rows = token_logprobs(model, enc)
    scores = torch.full((enc.num_examples, enc.max_candidates), float("-inf"))
    scores[enc.owner, enc.slot] = _mean_per_row(lp, rows, enc.input_ids.shape[0])
    return scores


@pytest.mark.parametrize("kind", ["llama", "opt", "plain", "prefix"])
def test_one_token_candidates_run_each_prompt_once_with_the_same_scores(kind):
    """The training loss's fast path (one forward row per example) against the general path, gradients too."""
    tok = build_tiny_tokenizer()
    model = tiny("opt" if kind == "opt" else "llama")
    if kind == "plain":
        model = PlainForward(model)
    if kind == "prefix":
        model = get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    exs = one_token_examples(tok)
    enc = encode(tok, exs, MAX_LENGTH)
    rows = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
    fast = candidate_scores(model, enc)
    hook.remove()
    assert rows == [len(exs)]  # one row per example, not one per candidate
    torch.testing.assert_close(fast, flat_scores(model, enc), atol=1e-5, rtol=0)
    assert torch.isinf(fast[0, 2:]).all() and torch.isfinite(fast[1]).all()
    params = [p for p in model.parameters() if p.requires_grad][:3]
    fast_grad = torch.autograd.grad(torch.nn.functional.cross_entropy(fast, enc.labels), params)
    flat_grad = torch.autograd.grad(torch.nn.functional.cross_entropy(flat_scores(model, enc), enc.labels), params)
    for a, b in zip(fast_grad, flat_grad):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    if shares_prompt(model):  # the shared evaluation path skips the candidates' pass too
        torch.testing.assert_close(shared_prompt_scores(model, tok, exs, MAX_LENGTH, "cpu"), fast, atol=1e-5, rtol=0)


@torch.no_grad()
def test_batched_generation_equals_one_at_a_time():
    tok, model = build_tiny_tokenizer(), tiny("llama")
    prompts = [ex.prompt for ex in examples()[:6]]
    batched = greedy_generate(model, tok, prompts, MAX_LENGTH, 8, "cpu")
    assert batched == [greedy_generate(model, tok, [p], MAX_LENGTH, 8, "cpu")[0] for p in prompts]
    assert any(batched) and all("\n" not in t for t in batched)


def test_truncation_keeps_bos_and_the_end():
    assert fit_prompt([1, 5, 6, 7, 8], 3, bos_id=1) == [1, 7, 8]
    assert fit_prompt([5, 6, 7, 8], 2, bos_id=1) == [7, 8]
    assert fit_prompt([1, 5], 4, bos_id=1) == [1, 5]


def test_several_correct_candidates():
    ex = Example(prompt="p", candidates=[" a", " b", " c"], label=0, gold=[0, 2])
    assert [ex.is_correct(i) for i in range(3)] == [True, False, True]
    assert [Example(prompt="p", candidates=[" a", " b"], label=1).is_correct(i) for i in range(2)] == [False, True]


@pytest.mark.parametrize("pred, answers, f1, em", [
    ("The Eiffel Tower!", ["eiffel tower"], 1.0, 1.0),  # case, article, punctuation
    ("an apple a day", ["Apple, day."], 1.0, 1.0),
    ("in Paris, France", ["Paris", "France's capital"], 0.5, 0.0),  # P 1/3, R 1 -> 0.5; no overlap -> 0
    ("the big red dog", ["a red dog", "big dog house"], 0.8, 0.0),  # P 2/3 R 1 -> 0.8 beats 2/3
    ("seven", ["7", "Seven"], 1.0, 1.0),  # the best of several gold answers
])
def test_squad_f1_em_by_hand(pred, answers, f1, em):
    assert squad_scores(pred, answers) == pytest.approx((f1, em))
