"""Eval throughput on model=tiny: one example at a time against padded batches, flat and shared-prompt.

    python -m zorun.tasks.evalbench          # prints examples/s and the speed-up of each way

Builds SST-2 (plain and with 8 ICL demonstrations) and ReCoRD (10 entities
per query) from generated records in the hubs' schema, through the same
loading and templates as a run, then times the scorers (best of 3, the ways
interleaved, so a busy machine slows them alike).
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from zorun.config import register_configs
from zorun.paths import CONF_DIR

WORDS = "good bad river table happy cold seven morning film plot actor scene music story slow dull bright".split()


def _records(task: str, n: int, rng: random.Random):
    def sentence(k):
        return " ".join(rng.choice(WORDS) for _ in range(k))

    if task == "sst2":
        return [{"sentence": sentence(12), "label": i % 2, "idx": i} for i in range(n)]
    out = []
    for i in range(n):
        entities = [f"E{j}x{i}" for j in range(10)]
        out.append({"passage": f"{sentence(40)}\n@highlight\n{sentence(8)}", "query": "@placeholder " + sentence(6),
                    "entities": entities, "answers": [entities[i % 10]]})
    return out


def bench(task: str, icl: int, n_test: int, folder: Path) -> None:
    from zorun.models import load_model, load_tokenizer
    from zorun.tasks import build_task
    from zorun.tasks.scoring import candidate_scores, encode, shared_prompt_scores

    rng = random.Random(0)
    files = {}
    for split, n in (("train", 64), ("validation", n_test)):
        files[split] = folder / f"{task}-{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in _records(task, n, rng)))
    overrides = [f"task={task}", f"task.data_files.train={files['train']}",
                 f"task.data_files.validation={files['validation']}", "task.num_train=32", "task.num_dev=0",
                 f"task.num_test={n_test}", f"task.icl_demos={icl}"]
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    examples, tok, model = build_task(cfg.task).test, load_tokenizer(cfg.model), load_model(cfg.model, 0)
    length, bs = cfg.model.max_length, 32
    ways = {
        "one at a time": lambda: [candidate_scores(model, encode(tok, [e], length)) for e in examples],
        "batch 32, flat": lambda: [candidate_scores(model, encode(tok, examples[i:i + bs], length))
                                   for i in range(0, len(examples), bs)],
        "batch 32, shared prompt": lambda: [shared_prompt_scores(model, tok, examples[i:i + bs], length, "cpu")
                                            for i in range(0, len(examples), bs)],
    }
    best = dict.fromkeys(ways, float("inf"))
    with torch.no_grad():
        for _ in range(3):
            for name, way in ways.items():
                start = time.perf_counter()
                way()
                best[name] = min(best[name], time.perf_counter() - start)
    for name, seconds in best.items():
        print(f"{task:7s} icl={icl:<2d} n={len(examples):<4d} {name:24s} {len(examples) / seconds:8.1f} examples/s"
              f"   speed-up {best['one at a time'] / seconds:4.1f}x")


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        for task, icl, n in (("sst2", 0, 500), ("sst2", 8, 500), ("record", 0, 200)):
            bench(task, icl, n, Path(folder))


if __name__ == "__main__":
    main()
