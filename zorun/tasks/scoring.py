"""Losses and evaluators over Examples, as MeZO computes them.

A candidate's score is the mean log-likelihood of its tokens after the
prompt. Training loss is cross-entropy over the candidates' scores
(train_as_classification) or the LM loss of the gold continuation's tokens.

A prompt loses its leading whitespace (MeZO ``lstrip()``s the string it
feeds: after demonstrations a prompt keeps its own, since the string then
starts with the first demonstration). A prompt too long for model.max_length
loses tokens from the left (a leading BOS stays, as in MeZO), once per
example: all its candidates are scored after the same context, however long
each is.

Generation is greedy and stops, as MeZO's, at the token that encodes a single
newline or at EOS; the decoded continuation is kept whole (stripped), so a
token holding two newlines lets a later line through, as it does in MeZO.

Evaluation runs in padded batches. Where the model's forward takes a cache and
position ids (decoder-only transformers models do), each
prompt runs once and its cache is shared by all its candidates; otherwise every
(prompt + candidate) sequence runs in one flat batch. Both give the same scores.
Where every candidate is a single token, training and evaluation alike run
each prompt once and read all its candidates off the logits after it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from zorun.tasks.base import Example
from zorun.tasks.metrics import squad_scores


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


def fit_prompt(ids: List[int], budget: int, bos_id) -> List[int]:
    """Keep the last `budget` tokens; a leading BOS stays in front (MeZO's truncation)."""
    if len(ids) <= budget:
        return ids
    if bos_id is not None and budget >= 2 and ids[0] == bos_id:
        return ids[:1] + ids[len(ids) - budget + 1:]
    return ids[len(ids) - budget:]


def tokenize(tok, ex: Example, max_length: int, gold_only: bool = False) -> Tuple[List[int], List[List[int]]]:
    """Prompt ids (fitted) and the ids of each continuation scored: candidates, or the gold one."""
    texts = [ex.completion] if gold_only or not ex.candidates else ex.candidates
    answers = [tok(t, add_special_tokens=False)["input_ids"][: max_length - 1] for t in texts]
    prompt = tok(ex.prompt.lstrip(), add_special_tokens=True)["input_ids"]
    return fit_prompt(prompt, max_length - max(len(a) for a in answers), tok.bos_token_id), answers


def encode(tok, examples: Sequence[Example], max_length: int, gold_only: bool = False) -> Encoded:
    seqs: List[Tuple[List[int], int]] = []
    owner, slot = [], []
    for i, ex in enumerate(examples):
        prompt, answers = tokenize(tok, ex, max_length, gold_only)
        for j, ans in enumerate(answers):
            seqs.append((prompt + ans, len(ans)))
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


def _mean_per_row(lp: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    sums = torch.zeros(n, device=lp.device).index_add_(0, rows, lp)
    counts = torch.zeros(n, device=lp.device).index_add_(0, rows, torch.ones_like(lp))
    return sums / counts


def candidate_scores(model, enc: Encoded) -> torch.Tensor:
    """[B, C] mean token log-likelihood per candidate; -inf where an example has fewer candidates."""
    if bool((enc.answer_mask.sum(1) == 1).all()):
        return _one_token_scores(model, enc)
    lp, rows = token_logprobs(model, enc)
    scores = torch.full((enc.num_examples, enc.max_candidates), float("-inf"), device=lp.device)
    scores[enc.owner, enc.slot] = _mean_per_row(lp, rows, enc.input_ids.shape[0])
    return scores


def _one_token_scores(model, enc: Encoded) -> torch.Tensor:
    """candidate_scores when every candidate is one token (SST-2's and VADER's verbalizers): all of an
    example's scores come from the logits after its prompt, so each prompt runs once (half the forward of
    a two-way task) and only the positions before an answer are projected onto the vocabulary."""
    before = enc.answer_mask.float().argmax(1) - 1  # [N] the position that predicts each answer token
    answer = enc.input_ids.gather(1, (before + 1)[:, None]).squeeze(1)
    first = (enc.slot == 0).nonzero().squeeze(1)  # one sequence per example, in example order
    width = int(before.max()) + 1
    keep = torch.unique(before)  # sorted
    kwargs = {"logits_to_keep": keep} if keeps_logits(model) else {}
    logits = model(input_ids=enc.input_ids[first, :width], attention_mask=enc.attention_mask[first, :width],
                   **kwargs).logits
    column = torch.searchsorted(keep, before) if kwargs else before
    lp = logits[enc.owner, column].float().log_softmax(-1).gather(1, answer[:, None]).squeeze(1)
    scores = torch.full((enc.num_examples, enc.max_candidates), float("-inf"), device=lp.device)
    scores[enc.owner, enc.slot] = lp
    return scores


def shares_prompt(model) -> bool:
    """Whether the forward can continue from a cache at given positions (decoder-only HF models).

    A peft model passes those arguments through to its base model, except prompt
    learning (prefix tuning), which fills the cache itself.
    """
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and peft_config.is_prompt_learning:
        return False
    return cache_argument(model) is not None and "position_ids" in inspect.signature(_base(model).forward).parameters


def _base(model):
    """The transformers model under a peft wrapper, which passes keyword arguments through to it."""
    return model.get_base_model() if getattr(model, "active_peft_config", None) is not None else model


def keeps_logits(model) -> bool:
    """Whether the forward takes `logits_to_keep` (transformers 4.x OPT does not: it projects every position)."""
    return "logits_to_keep" in inspect.signature(_base(model).forward).parameters


def cache_argument(model):
    """The forward's name for the key/value cache: `cache` from transformers 5.x, `past_key_values` before."""
    params = inspect.signature(_base(model).forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def _left_pad(rows: List[List[int]], pad_id: int) -> Tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, width - len(r):] = torch.tensor(r)
        mask[b, width - len(r):] = 1
    return ids, mask


def shared_prompt_scores(model, tok, examples: Sequence[Example], max_length: int, device) -> torch.Tensor:
    """[B, C] as :func:`candidate_scores`, running each prompt once and its candidates on its cache."""
    items = [tokenize(tok, ex, max_length) for ex in examples]
    ids, mask = _left_pad([p for p, _ in items], tok.pad_token_id)
    ids, mask = ids.to(device), mask.to(device)
    last = {"logits_to_keep": 1} if keeps_logits(model) else {}  # only the last position's logits are needed
    answers = [a for _, ans in items for a in ans]
    width = max(len(a) for a in answers)
    out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                use_cache=width > 1, **last)
    first = out.logits[:, -1].float().log_softmax(-1)  # [B, V]: predicts each candidate's first token
    owner = torch.tensor([b for b, (_, answers) in enumerate(items) for _ in answers], device=device)
    slot = torch.tensor([j for _, answers in items for j in range(len(answers))], device=device)
    if width == 1:  # one-token candidates: the prompt's last logits score them all
        scores = torch.full((len(items), int(slot.max()) + 1), float("-inf"), device=device)
        scores[owner, slot] = first[owner, torch.tensor([a[0] for a in answers], device=device)]
        return scores
    cand = torch.full((len(answers), width), tok.pad_token_id, dtype=torch.long)
    cmask = torch.zeros((len(answers), width), dtype=torch.bool)
    for r, a in enumerate(answers):
        cand[r, : len(a)] = torch.tensor(a)
        cmask[r, : len(a)] = True
    cand, cmask = cand.to(device), cmask.to(device)
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    cache.reorder_cache(owner)  # one copy of its prompt's cache per candidate
    # each candidate continues its prompt; padding gets position 0 (in range for learned position tables)
    positions = torch.where(cmask, mask.sum(1)[owner, None] + torch.arange(width, device=device), 0)
    logits = model(input_ids=cand, attention_mask=torch.cat([mask[owner], cmask.long()], 1),
                   position_ids=positions, **{cache_argument(model): cache}).logits
    lp_first = first[owner].gather(1, cand[:, :1]).squeeze(1)
    later = cmask[:, 1:]  # position t predicts token t + 1
    lp_later = logits[:, :-1][later].float().log_softmax(-1).gather(1, cand[:, 1:][later][:, None]).squeeze(1)
    rows = torch.arange(len(answers), device=device)
    lp = torch.cat([lp_first, lp_later])
    row_of = torch.cat([rows, rows[:, None].expand_as(later)[later]])
    scores = torch.full((len(items), int(slot.max()) + 1), float("-inf"), device=device)
    scores[owner, slot] = _mean_per_row(lp, row_of, len(answers))
    return scores


def classification_loss(model, enc: Encoded) -> torch.Tensor:
    return F.cross_entropy(candidate_scores(model, enc), enc.labels)


def lm_loss(model, enc: Encoded) -> torch.Tensor:
    lp, _ = token_logprobs(model, enc)
    return -lp.mean()


@torch.no_grad()
def evaluate_objective(model, tok, examples: List[Example], max_length: int, batch_size: int, device,
                       as_classification: bool) -> float:
    """The training loss over `examples` (MeZO's eval_loss): CE over the candidates per example, or the LM
    loss of the gold continuation per answer token."""
    total, weight = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        enc = encode(tok, batch, max_length, gold_only=not as_classification).to(device)
        n = enc.num_examples if as_classification else int(enc.answer_mask[:, 1:].sum())
        total += float(classification_loss(model, enc) if as_classification else lm_loss(model, enc)) * n
        weight += n
    return total / max(weight, 1)


@torch.no_grad()
def evaluate_classification(model, tok, examples: List[Example], max_length: int, batch_size: int,
                            device, progress: Optional[Callable[[int], None]] = None) -> Dict[str, float]:
    """Accuracy (argmax among the correct candidates) and the cross-entropy of the trained-on label.
    `progress` is told the size of each batch scored (the console's bar)."""
    shared = shares_prompt(model)
    correct, nll = 0, 0.0
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        if shared:
            scores = shared_prompt_scores(model, tok, batch, max_length, device)
        else:
            scores = candidate_scores(model, encode(tok, batch, max_length).to(device))
        labels = torch.tensor([ex.label for ex in batch], device=scores.device)
        correct += sum(ex.is_correct(int(c)) for ex, c in zip(batch, scores.argmax(dim=1)))
        nll += float(F.cross_entropy(scores, labels, reduction="sum"))
        if progress:
            progress(len(batch))
    n = max(len(examples), 1)
    return {"accuracy": correct / n, "loss": nll / n}


def stop_token_ids(tok) -> List[int]:
    """MeZO's stop rule: the last token of a lone newline, and EOS."""
    newline = tok("\n", add_special_tokens=False)["input_ids"][-1]
    return [newline] if tok.eos_token_id is None else [newline, tok.eos_token_id]


@torch.no_grad()
def greedy_generate(model, tok, prompts: List[str], max_length: int, max_new_tokens: int, device) -> List[str]:
    """Greedy decoding up to a newline token or EOS; left padding so every row continues its prompt."""
    budget = max(max_length - max_new_tokens, 1)
    rows = [fit_prompt(tok(p.lstrip(), add_special_tokens=True)["input_ids"], budget, tok.bos_token_id)
            for p in prompts]
    ids, mask = _left_pad(rows, tok.pad_token_id)
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=stop_token_ids(tok))
    texts = tok.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    return [t.strip() for t in texts]


def evaluate_generation(model, tok, examples: List[Example], max_length: int, batch_size: int,
                        device, max_new_tokens: int, progress: Optional[Callable[[int], None]] = None) -> Dict[str, float]:
    f1, em = 0.0, 0.0
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        preds = greedy_generate(model, tok, [ex.prompt for ex in batch], max_length, max_new_tokens, device)
        for pred, ex in zip(preds, batch):
            f1_ex, em_ex = squad_scores(pred, ex.answers)
            f1, em = f1 + f1_ex, em + em_ex
        if progress:
            progress(len(batch))
    n = max(len(examples), 1)
    return {"f1": f1 / n, "em": em / n}
