"""MeZO's protocol, choice by choice: each test fails on the behaviour zorun had before it matched MeZO's code."""

from __future__ import annotations

import torch

from zorun.models.tokenizer import build_tiny_tokenizer
from zorun.tasks.base import Example
from zorun.tasks.metrics import squad_f1, squad_scores
from zorun.tasks.scoring import greedy_generate, stop_token_ids, tokenize


# ------------------------------------------------------------------ point 7
def test_prompts_lose_leading_whitespace_as_mezo_lstrips_them():
    tok = build_tiny_tokenizer()
    plain = Example("great river It was", candidates=[" great", " bad"], label=0)
    padded = Example("\n\t great river It was", candidates=[" great", " bad"], label=0)
    assert tokenize(tok, padded, 64) == tokenize(tok, plain, 64)


def test_f1_of_two_empty_answers_is_zero_as_the_official_squad_v1_script():
    assert squad_f1("", "") == 0.0 and squad_f1("the", "a") == 0.0  # both normalise to nothing
    assert squad_scores("", [""]) == (0.0, 1.0)  # exact match still holds, as in the script


class Scripted:
    """A model whose greedy continuation is fixed text; records the generate() arguments."""

    def __init__(self, tok, text):
        self.ids = tok(text, add_special_tokens=False)["input_ids"]

    def generate(self, input_ids, **kwargs):
        self.kwargs = kwargs
        tail = torch.tensor([self.ids] * input_ids.shape[0])
        return torch.cat([input_ids, tail], dim=1)


def test_generation_stops_on_the_newline_token_or_eos_and_keeps_the_text_whole():
    tok = build_tiny_tokenizer()
    model = Scripted(tok, " Paris\n\nFrance ")
    assert greedy_generate(model, tok, ["Where?"], 64, 8, "cpu") == ["Paris\n\nFrance"]
    newline = tok("\n", add_special_tokens=False)["input_ids"][-1]
    assert model.kwargs["eos_token_id"] == stop_token_ids(tok) == [newline, tok.eos_token_id]
    assert "stop_strings" not in model.kwargs  # any newline-holding token no longer stops it
