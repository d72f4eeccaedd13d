"""The offline tokenizer of model=tiny: a byte-level BPE trained in code, in milliseconds.

Byte-level, so any text encodes (no unknown tokens); its merges are learned
from the synthetic task's vocabulary, so those words are single tokens.
Training is deterministic: the same vocabulary every time.
"""

from __future__ import annotations

from functools import lru_cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<s>", "</s>"]


def _corpus():
    from zorun.tasks.synthetic import ALL_WORDS, TEMPLATE_WORDS

    words = list(ALL_WORDS) + list(TEMPLATE_WORDS)
    for _ in range(50):
        yield " ".join(words)
    # common English and digits so local text tokenises into reasonable pieces
    yield "the a an and or of to in is was it this that yes no true false 0 1 2 3 4 5 6 7 8 9 ? ! , . \n"


@lru_cache(maxsize=None)
def build_tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
