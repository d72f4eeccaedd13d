"""Candidate scoring, losses and the generation evaluator, checked against direct computations."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zorun.models.tokenizer import build_tiny_tokenizer
from zorun.tasks import Example
from zorun.tasks.metrics import squad_em, squad_f1
from zorun.tasks.scoring import candidate_scores, classification_loss, encode, evaluate_generation, lm_loss
from zorun.tasks.synthetic import generate
from conftest import ROOT, tiny_llama


def _model():
    return tiny_llama(hidden=32, layers=2, vocab=640, seed=0)


def _mean_loglik(model, tok, prompt, cand):
    p = tok(prompt)["input_ids"]
    a = tok(cand, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + a])
    logp = F.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return torch.stack([logp[len(p) + i - 1, t] for i, t in enumerate(a)]).mean()


@torch.no_grad()
def test_candidate_scores_equal_per_sequence_mean_loglik():
    tok, model = build_tiny_tokenizer(), _model()
    examples = [Example("good warm . It was", [" great", " terrible"], 1),
                Example("a b c", [" yes", " no", " maybe so"], 2)]
    scores = candidate_scores(model, encode(tok, examples, max_length=128))
    assert scores.shape == (2, 3) and torch.isinf(scores[0, 2])
    for i, ex in enumerate(examples):
        for j, c in enumerate(ex.candidates):
            torch.testing.assert_close(scores[i, j], _mean_loglik(model, tok, ex.prompt, c), atol=1e-5, rtol=1e-5)
    ce = classification_loss(model, encode(tok, examples, 128))
    manual = -(torch.log_softmax(scores[0, :2], 0)[1] + torch.log_softmax(scores[1], 0)[2]) / 2
    torch.testing.assert_close(ce, manual)
    lm = lm_loss(model, encode(tok, examples, 128, gold_only=True))
    n0 = len(tok(" terrible", add_special_tokens=False)["input_ids"])
    n1 = len(tok(" maybe so", add_special_tokens=False)["input_ids"])
    manual_lm = -(_mean_loglik(model, tok, examples[0].prompt, " terrible") * n0
                  + _mean_loglik(model, tok, examples[1].prompt, " maybe so") * n1) / (n0 + n1)
    torch.testing.assert_close(lm, manual_lm, atol=1e-5, rtol=1e-5)


def test_long_prompts_are_truncated_from_the_left():
    tok = build_tiny_tokenizer()
    ex = Example(" ".join(["river"] * 100) + " . It was", [" great", " terrible"], 0)
    enc = encode(tok, [ex], max_length=16)
    assert enc.input_ids.shape[1] <= 16
    kept = tok.decode(enc.input_ids[0][enc.attention_mask[0].bool()])
    assert kept.endswith(". It was great")


def test_synthetic_task_is_deterministic_and_balanced():
    a, b = generate(200, 0, 3, 5), generate(200, 0, 3, 5)
    assert [e.prompt for e in a] == [e.prompt for e in b]
    assert sum(e.label for e in a) == 100
    assert [e.prompt for e in generate(200, 1, 3, 5)] != [e.prompt for e in a]


def test_tiny_tokenizer_is_deterministic_fits_the_model_and_is_lossless():
    from omegaconf import OmegaConf

    from zorun.models.tokenizer import build_tiny_tokenizer as build

    build.cache_clear()
    v1 = build().get_vocab()
    build.cache_clear()
    assert build().get_vocab() == v1
    assert len(v1) <= OmegaConf.load(ROOT / "conf/model/tiny.yaml").arch.vocab_size
    tok = build()
    for text in ["naïve 東京 ✓", "a\nb c", "good river . It was great"]:
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
    assert len(tok(" great", add_special_tokens=False)["input_ids"]) == 1


def test_squad_metrics():
    assert squad_em("The Eiffel tower!", "eiffel tower") == 1.0
    assert squad_f1("in Paris France", "Paris") == 0.5
    assert squad_f1("", "") == 0.0 and squad_f1("x", "") == 0.0  # the official v1.1 script, as MeZO


@torch.no_grad()
def test_generation_evaluator_runs_greedy_and_scores_f1():
    tok, model = build_tiny_tokenizer(), _model()
    examples = [Example("Q: colour of sky?\nA:", answers=["blue"]), Example("Q: two plus two?\nA:", answers=["four", "4"])]
    metrics = evaluate_generation(model, tok, examples, max_length=64, batch_size=2, device="cpu", max_new_tokens=5)
    assert set(metrics) == {"f1", "em"} and 0.0 <= metrics["f1"] <= 1.0
