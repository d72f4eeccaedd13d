"""Losses and evaluators over Examples, as MeZO computes them.

A candidate's score is the mean log-likelihood of its tokens after the
prompt. Training loss is cross-entropy over the candidates' scores
(train_as_classification) or the LM loss of the gold answer's tokens only.
Prompts are truncated from the left to fit model.max_length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from zorun.tasks.base import Example
from zorun.tasks.metrics import squad_em, squad_f1


@dataclass
class Encoded:
    """Right-padded sequences (prompt + one candidate each) and where the answers are."""

    input_ids: torch.Tensor  # [N, T]
    attention_mask: torch.Tensor  # [N, T]
    answer_mask: torch.Tensor  # [N, T] True at answer tokens
    owner: torch.Tensor  # [N] example index of each sequence
    slot: torch.Tensor  # [N] candidate index of each sequence
    labels: torch.Tensor  # [B] gold candidate per example (-1 if none)
    num_examples: int
    max_candidates: int

    def to(self, device) -> "Encoded":
        for name in ("input_ids", "attention_mask", "answer_mask", "owner", "slot", "labels"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def _prompt_ids(tok, prompt: str) -> List[int]:
    return tok(prompt, add_special_tokens=True)["input_ids"]


def encode(tok, examples: Sequence[Example], max_length: int, gold_only: bool = False) -> Encoded:
    seqs: List[Tuple[List[int], int]] = []
    owner, slot = [], []
    for i, ex in enumerate(examples):
        prompt = _prompt_ids(tok, ex.prompt)
        if not ex.candidates:
            texts = ex.answers[:1]
        else:
            texts = [ex.candidates[ex.label]] if gold_only else ex.candidates
        for j, cand in enumerate(texts):
            ans = tok(cand, add_special_tokens=False)["input_ids"][: max_length - 1]
            keep = max_length - len(ans)
            seqs.append((prompt[-keep:] + ans, len(ans)))
            owner.append(i)
            slot.append(j)
    width = max(len(s) for s, _ in seqs)
    ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    amask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for r, (s, n_ans) in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
        attn[r, : len(s)] = 1
        amask[r, len(s) - n_ans : len(s)] = True
    labels = torch.tensor([ex.label if ex.label is not None else -1 for ex in examples])
    return Encoded(ids, attn, amask, torch.tensor(owner), torch.tensor(slot), labels,
                   num_examples=len(examples), max_candidates=max(slot) + 1)


def token_logprobs(model, enc: Encoded) -> Tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the answer tokens (flat) and the sequence each belongs to."""
    logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
    target_mask = enc.answer_mask[:, 1:]
    picked = logits[:, :-1][target_mask].float()  # only the rows that predict answer tokens
    targets = enc.input_ids[:, 1:][target_mask]
    lp = F.log_softmax(picked, dim=-1).gather(1, targets[:, None]).squeeze(1)
    rows = torch.arange(enc.input_ids.shape[0], device=lp.device)[:, None].expand_as(target_mask)[target_mask]
    return lp, rows


def candidate_scores(model, enc: Encoded) -> torch.Tensor:
    """[B, C] mean token log-likelihood per candidate; -inf where an example has fewer candidates."""
    lp, rows = token_logprobs(model, enc)
    n = enc.input_ids.shape[0]
    sums = torch.zeros(n, device=lp.device).index_add_(0, rows, lp)
    counts = torch.zeros(n, device=lp.device).index_add_(0, rows, torch.ones_like(lp))
    scores = torch.full((enc.num_examples, enc.max_candidates), float("-inf"), device=lp.device)
    scores[enc.owner, enc.slot] = sums / counts
    return scores


def classification_loss(model, enc: Encoded) -> torch.Tensor:
    return F.cross_entropy(candidate_scores(model, enc), enc.labels)


def lm_loss(model, enc: Encoded) -> torch.Tensor:
    lp, _ = token_logprobs(model, enc)
    return -lp.mean()


@torch.no_grad()
def evaluate_classification(model, tok, examples: List[Example], max_length: int, batch_size: int,
                            device) -> Dict[str, float]:
    correct, nll = 0, 0.0
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        enc = encode(tok, batch, max_length).to(device)
        scores = candidate_scores(model, enc)
        correct += int((scores.argmax(dim=1) == enc.labels).sum())
        nll += float(F.cross_entropy(scores, enc.labels, reduction="sum"))
    n = max(len(examples), 1)
    return {"accuracy": correct / n, "loss": nll / n}


@torch.no_grad()
def greedy_generate(model, tok, prompts: List[str], max_length: int, max_new_tokens: int, device) -> List[str]:
    """Greedy decoding, stopping at a newline; left padding so every row continues its prompt."""
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = tok(prompts, return_tensors="pt", padding=True, truncation=True,
                  max_length=max_length - max_new_tokens).to(device)
    finally:
        tok.padding_side = side
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tok.pad_token_id, stop_strings=["\n"], tokenizer=tok)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [t.split("\n")[0].strip() for t in texts]


def evaluate_generation(model, tok, examples: List[Example], max_length: int, batch_size: int,
                        device, max_new_tokens: int) -> Dict[str, float]:
    f1, em = 0.0, 0.0
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        preds = greedy_generate(model, tok, [ex.prompt for ex in batch], max_length, max_new_tokens, device)
        for pred, ex in zip(preds, batch):
            f1 += max(squad_f1(pred, a) for a in ex.answers)
            em += max(squad_em(pred, a) for a in ex.answers)
    n = max(len(examples), 1)
    return {"f1": f1 / n, "em": em / n}
