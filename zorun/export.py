"""The fine-tuned model as a Hugging Face folder: what a run writes, and the library of `zorun-export`.

A completed full-parameter run writes ``<run dir>/model/`` (budget.save_model):
save_pretrained's safetensors shards, config and generation config, and the
tokenizer, so ``AutoModelForCausalLM.from_pretrained(run_dir / "model")`` loads
exactly the final parameters (tied weights stay tied). A peft run writes
``adapter/``, and with budget.save_merged its LoRA merged into the weights as
``model/``.

`zorun-export RUN_DIR [--step N] [--out DIR]` writes the same folder for any
step of a run: from the checkpoint of that step, else from the newest
checkpoint before it (or the base model) with the trajectory log replayed up
to it (see :mod:`zorun.replay`), so a run without checkpoints (budget=smoke)
can still be exported.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Optional, Tuple

import torch
from peft import PeftModel

from zorun.checkpoint import Checkpoint, Checkpoints
from zorun.errors import ZorunError
from zorun.models import load_tokenizer
from zorun.recovery import load_state
from zorun.replay import load_run_config, replay
from zorun.stack import Stack
from zorun.timing import Clock
from zorun.trajectory import NAME, ReplayError, read

log = logging.getLogger(__name__)

MODEL_DIR = "model"  # <run dir>/model: what from_pretrained loads
MAX_SHARD_SIZE = "5GB"  # the hub's usual shard size, fixed here whatever the transformers version's default


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def save_model(model: torch.nn.Module, tokenizer, out: Path, merge: bool = True) -> Path:
    """Write `model` with its tokenizer as a Hugging Face folder, atomically (a kill leaves no half folder).

    A peft model is merged into its base weights first (merge=True; this changes the model in place, so it is
    the last thing done with it), or written as the adapter alone (merge=False).
    """
    out = Path(out)
    if isinstance(model, PeftModel) and merge:
        model = model.merge_and_unload()
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True, max_shard_size=MAX_SHARD_SIZE)
    tokenizer.save_pretrained(str(tmp))
    if out.exists():  # a relaunched run completing again: the new folder replaces the old one
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


# ------------------------------------------------------------------ zorun-export
def restore(stack: Stack, run_dir: Path, step: Optional[int]) -> Tuple[int, str]:
    """Put the run's model at `step` (default: the last one logged or checkpointed); returns (step, how)."""
    saved = Checkpoints(run_dir / "checkpoints", keep=1).steps()
    records = []
    if (run_dir / NAME).is_file():
        header, records = read(run_dir / NAME)
        if header["num_blocks"] != len(stack.space):
            raise ReplayError(f"the log has {header['num_blocks']} blocks, model={stack.cfg.model.name} has "
                              f"{len(stack.space)}")
    logged = records[-1]["step"] + 1 if records else 0
    last = max([logged] + [s for s, _ in saved])
    target = last if step is None else step
    if not 0 <= target <= last:
        raise ZorunError(f"--step {step}: {run_dir} holds steps 0..{last} (the trajectory log and the checkpoints)")
    start = max((s for s, _ in saved if s <= target), default=None)
    if start is not None:
        ckpt = Checkpoint.open(dict(saved)[start])
        ckpt.load_params(stack.space)
        if start == target:
            return target, f"from checkpoint {ckpt.path.name}"
        load_state(stack, ckpt)
    if target > logged:
        raise ReplayError(f"--step {target}: no checkpoint there, and the trajectory log of {run_dir} ends at step "
                          f"{logged}; export a step up to {logged} or one with a checkpoint")
    print(f"zorun-export: replaying {target - (start or 0)} steps ({start or 0}..{target - 1}) of trajectory.jsonl "
          f"from {'checkpoint step ' + str(start) if start is not None else 'the base model'}", flush=True)
    applied = replay(stack.estimator, records, len(stack.space), start or 0, target, Clock(), stack.replayed_sampler)
    return target, f"{applied} steps replayed from {'checkpoint ' + str(start) if start is not None else 'the base model'}"


def export(run_dir: Path, step: Optional[int], out: Optional[Path], device: Optional[str], merge: bool) -> Path:
    cfg = load_run_config(run_dir, device, "zorun-export")
    started = time.perf_counter()
    stack = Stack.build(cfg)
    step, how = restore(stack, run_dir, step)
    out = out or run_dir / "export" / f"step-{step}"
    if out.exists() and any(out.iterdir()):
        raise ZorunError(f"--out {out} exists and is not empty; remove it or choose another directory")
    peft = isinstance(stack.model, PeftModel)
    if merge and not (peft and cfg.model.peft == "lora"):
        raise ZorunError(f"--merge merges a LoRA adapter, and model.peft={cfg.model.peft}; drop --merge")
    save_model(stack.model, load_tokenizer(cfg.model), out, merge=merge)
    what = "adapter" if peft and not merge else "model"
    print(f"zorun-export: step {step} ({how}) -> {out}: {what}, {folder_bytes(out) / 1e6:.1f} MB "
          f"in {time.perf_counter() - started:.1f} s")
    return out
