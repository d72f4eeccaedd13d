"""task=synthetic: a generated, balanced, binary sentiment-style task that needs no download.

Each example mixes `cue_words` words of its class with `filler_words`
neutral ones, in SST-2's template: "<words> . It was" -> " great" | " terrible".
Generated from task.seed alone, so every run sees the same data.
"""

from __future__ import annotations

import random

from omegaconf import DictConfig

from zorun.tasks.base import Example, Task, register_task, split_examples

POSITIVE = ("good", "fine", "lovely", "bright", "happy", "warm", "sweet", "calm",
            "brave", "fresh", "kind", "clever", "gentle", "vivid", "joyful", "superb")
NEGATIVE = ("bad", "dull", "awful", "grim", "sad", "cold", "bitter", "noisy",
            "rude", "stale", "cruel", "boring", "harsh", "bleak", "gloomy", "poor")
NEUTRAL = ("table", "river", "paper", "window", "garden", "yellow", "seven", "morning",
           "street", "music", "stone", "letter", "city", "train", "chair", "cloud",
           "coffee", "winter", "number", "door", "story", "market", "field", "road")
ALL_WORDS = POSITIVE + NEGATIVE + NEUTRAL
TEMPLATE_WORDS = (".", "It", "was", " great", " terrible")
CANDIDATES = [" terrible", " great"]  # label 0 = negative, 1 = positive


def generate(n: int, seed: int, cue_words: int, filler_words: int) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = i % 2
        cues = rng.choices(POSITIVE if label else NEGATIVE, k=cue_words)
        words = cues + rng.choices(NEUTRAL, k=filler_words)
        rng.shuffle(words)
        out.append(Example(prompt=" ".join(words) + " . It was", candidates=list(CANDIDATES), label=label))
    return out


@register_task("synthetic")
def build(cfg: DictConfig) -> Task:
    opts = cfg.options
    total = cfg.num_train + cfg.num_dev + cfg.num_test
    examples = generate(total, cfg.seed, int(opts.get("cue_words", 3)), int(opts.get("filler_words", 5)))
    return Task(name="synthetic", type="classification", train_as_classification=cfg.train_as_classification,
                **split_examples(examples, cfg))
