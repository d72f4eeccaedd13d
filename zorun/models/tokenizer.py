"""Tokenizer helpers: the offline tokenizer of model=tiny, and model.bos_token_id.

The tiny tokenizer is a sentencepiece-style Unigram model built in code. Its
vocabulary is written down, not trained, so it is identical on every
machine: the synthetic task's words (and some common English) as whole
pieces, every printable ASCII character, and the 256 byte pieces of
byte-fallback, so any text encodes and decodes losslessly.
"""

from __future__ import annotations

import string
from functools import lru_cache

from typing import Optional

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from zorun.errors import ZorunError

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
COMMON = ("the", "a", "an", "and", "or", "of", "to", "in", "is", "this", "that", "yes", "no",
          "true", "false", "not", "what", "who", "question", "answer", "Question", "Answer", "does", "mean")
SPACE = "▁"


def _pieces():
    from zorun.tasks.synthetic import ALL_WORDS, TEMPLATE_WORDS

    words = sorted({w.strip() for w in (*ALL_WORDS, *TEMPLATE_WORDS, *COMMON) if len(w.strip()) > 1})
    chars = sorted(set(string.printable) - set(string.whitespace))
    pieces = [(t, 0.0) for t in SPECIALS]
    pieces += [(f"<0x{i:02X}>", -20.0) for i in range(256)]  # byte fallback: only when nothing else fits
    pieces += [(c, -10.0) for c in chars] + [(SPACE + c, -10.5) for c in chars] + [(SPACE, -11.0)]
    pieces += [(SPACE + w, -1.0) for w in words] + [(w, -1.5) for w in words]
    return pieces


@lru_cache(maxsize=None)
def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.Unigram(_pieces(), unk_id=SPECIALS.index("<unk>"), byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Metaspace(replacement=SPACE, prepend_scheme="first"),
                                     decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def with_bos(tok: PreTrainedTokenizerBase, bos_id: Optional[int]) -> PreTrainedTokenizerBase:
    """`tok`, starting every encoded text with token `bos_id` instead of its own BOS (None: unchanged).

    model.bos_token_id: OPT's tokenizer puts </s> (id 2) first, and MeZO's
    run.py sets OPT's BOS to id 0 (<s>), which the OPT presets follow. The
    fast tokenizer's post-processor is replaced, so every encode, the
    truncation that keeps a leading BOS, and generation agree on it.
    """
    if bos_id is None:
        return tok
    if not tok.is_fast:
        raise ZorunError(f"model.bos_token_id={bos_id} needs a fast (tokenizers) tokenizer, and "
                         f"{type(tok).__name__} is not; drop model.bos_token_id")
    if not 0 <= bos_id < len(tok):
        raise ZorunError(f"model.bos_token_id={bos_id} is outside the tokenizer's {len(tok)} ids; "
                         f"choose an id below {len(tok)}, or null for the tokenizer's own BOS")
    token = tok.convert_ids_to_tokens(bos_id)
    tok.bos_token = token
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{token} $A", pair=f"{token} $A $B:1", special_tokens=[(token, bos_id)])
    return tok
