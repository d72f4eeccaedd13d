"""zorun-bench memory and pertnn: peak memory of a training step, and of PertNN meta-training, against their baselines."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict

import torch

from zorun.bench.common import compose, device_of
from zorun.params import ParamSpace


def bench_memory(args: argparse.Namespace) -> Dict[str, Any]:
    """Peak memory of one training step per method next to one inference forward on the same batch (own processes)."""
    from zorun.memory import compare

    cfg = compose(args.overrides)  # a bad override is one line before any process starts
    overrides = ["model=opt-125m", *args.overrides, "model.init=random"]
    methods = [m for m in args.methods.split(",") if m]
    result = compare(overrides, methods)
    fwd = result["forward"]
    mib = 2 ** 20
    print(f"zorun-bench memory  {cfg.model.name} (random init, {getattr(cfg.model.dtype, 'value', cfg.model.dtype)}) "
          f"batch {cfg.budget.batch_size} of task={cfg.task.name}, device={device_of(cfg.model.device)}; "
          f"parameters {fwd['param_bytes'] / mib:.1f} MiB")
    print(f"{'method':<28} {'peak MiB':>10} {'x forward':>10} {'extra state MiB':>16}")
    print(f"{'inference forward (no grad)':<28} {fwd['peak_bytes'] / mib:>10.1f} {1.0:>10.3f} {0.0:>16.1f}")
    for method, step in result["steps"].items():
        step["ratio"] = step["peak_bytes"] / fwd["peak_bytes"]
        print(f"{method:<28} {step['peak_bytes'] / mib:>10.1f} {step['ratio']:>10.3f} "
              f"{step['state_bytes'] / mib:>16.1f}")
    return {"command": "memory", "overrides": overrides, **result}


def networks_size(preset: str) -> Dict[str, Any]:
    """PertNN's networks for a preset's architecture: blocks from a meta-device model (no weights, no
    download), parameter bytes in fp16 and fp32, and the size of zorun's safetensors file for them."""
    import tempfile

    from omegaconf import OmegaConf
    from transformers import AutoConfig, AutoModelForCausalLM

    from zorun.samplers.pertnn import BlockNets
    from zorun.samplers.pertnn_io import save

    cfg = compose([f"model={preset}"])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**OmegaConf.to_container(cfg.model.arch)))
    space = ParamSpace.from_model(model)
    nets = BlockNets(len(space))
    params = sum(p.numel() for p in nets.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        path = save(Path(tmp) / "nets.safetensors", nets, [b.name for b in space.blocks],
                    [list(b.tensor.shape) for b in space.blocks], base_model=str(cfg.model.hf_id), source="bench")
        file_bytes = path.stat().st_size
    return {"preset": preset, "model_params": space.numel, "blocks": len(space), "net_params": params,
            "fp16_bytes": 2 * params, "fp32_bytes": 4 * params, "file_bytes": file_bytes}


def bench_pertnn(args: argparse.Namespace) -> Dict[str, Any]:
    """Meta-training's peak memory against its first-order teacher alone, and the networks' size at scale."""
    from zorun.memory import compare_metatrain

    mib = 2 ** 20
    result = compare_metatrain(list(args.overrides))
    teacher, meta = result["teacher"]["peak_bytes"], result["metatrain"]["peak_bytes"]
    print(f"zorun-bench pertnn  overrides: {' '.join(args.overrides) or '(metatrain defaults)'}")
    print(f"parameters                                   {result['teacher']['param_bytes'] / mib:10.1f} MiB")
    print(f"first-order teacher step peak (fo-sgd, momentum)      {teacher / mib:10.1f} MiB")
    print(f"meta-training iteration peak (meta-step + teacher)    {meta / mib:10.1f} MiB")
    print(f"ratio meta-training / first-order: {meta / teacher:.3f}")
    size = networks_size(args.size_preset)
    print(f"networks for model={size['preset']} ({size['model_params'] / 1e9:.2f}B parameters, {size['blocks']} blocks): "
          f"{size['net_params']:,} parameters = {size['fp16_bytes'] / 1e6:.2f} MB fp16, "
          f"{size['fp32_bytes'] / 1e6:.2f} MB fp32; zorun's safetensors file {size['file_bytes'] / 1e6:.2f} MB")
    return {**result, "ratio": meta / teacher, "networks": size}
