"""zorun-bench: commands that print (and optionally save as JSON) speed figures.

    zorun-bench kernels [--sizes 1e6,1e7] [--dtypes float32,bfloat16]
        GB/s of zorun's perturb and update passes against a plain copy_ of the
        same bytes (the bandwidth roofline) and against a MeZO-style pass
        (torch.normal into a fresh tensor, then θ + ε·z), one process, one table.
    zorun-bench pertnn [metatrain overrides ...] [--size-preset opt-30b]
        peak memory of one PertNN meta-training iteration (meta-step + teacher
        step) against the first-order teacher step alone, same model and batch,
        each in its own process; and the size of the networks for a preset.
    zorun-bench step [overrides ...] [--samplers uniform,adalezo] [--batch 4] [--seq-len 128]
        zorun's estimator step with each listed sampler and a MeZO-style
        reference step (four torch.normal passes per tensor), rotated step by
        step on the same random-init model and batch: forward / perturb /
        update breakdown, step / (2 × forward), the share of elements each
        writes, zorun's speed-up, and each sampler's perturb+update time
        relative to the first's.
    zorun-bench memory [overrides ...] [--methods mezo/uniform,mezo/adalezo,fo-adam/uniform]
        peak memory of one training step per method next to one inference
        forward on the same batch, each in a fresh process, with each
        estimator's extra state.
    zorun-bench checkpoint [overrides ...] [--repeat 3]
        the cost of the sha256 of every checkpoint file: a save and a load
        (open, verify, parameters) with the share spent hashing.
    zorun-bench scaling [overrides ...] [--nprocs 1,2] [--steps 10]
        data-parallel ZO: training throughput of the same run under torchrun
        with each process count (threads per process: --threads, default 1).

Timings use the backend chosen with --kernels (auto: Triton on CUDA, the torch
reference on CPU) and synchronise CUDA around every timed region.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from zorun import kernels
from zorun.bench_checkpoint import add_parser as add_checkpoint_parser
from zorun.errors import ZorunError
from zorun.params import ParamSpace
from zorun.plan import Plan, mix_seed
from zorun.timing import Clock

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_s(fn: Callable[[], None], device: torch.device, repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def environment(device: torch.device) -> Dict[str, Any]:
    env = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
           "kernels": kernels.current()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


def mezo_style_pass(params: List[torch.Tensor], seed: int, alpha: float) -> None:
    """One MeZO-style pass: reseed the global generator, then θ ← θ + α·z per tensor with a fresh z."""
    torch.manual_seed(seed)
    for p in params:
        z = torch.normal(mean=0.0, std=1.0, size=p.size(), device=p.device, dtype=p.dtype)
        p.data = p.data + alpha * z


# ------------------------------------------------------------------ kernels
def bench_kernels(args: argparse.Namespace) -> Dict[str, Any]:
    device = _device(args.device)
    try:
        sizes_n = [int(float(s)) for s in args.sizes.split(",")]
    except ValueError:
        raise ZorunError(f"--sizes={args.sizes}: expected comma-separated numbers such as 1e6,1e8")
    unknown = [d for d in args.dtypes.split(",") if d not in DTYPES]
    if unknown or min(sizes_n) < args.blocks:
        raise ZorunError(f"--dtypes takes {', '.join(DTYPES)}; --sizes must be >= --blocks ({args.blocks})")
    _print_kernels_header(environment(device) | {"kernels": args.kernels})
    rows = []
    for dtype_name in args.dtypes.split(","):
        for n in sizes_n:
            for row in _bench_size(args, device, dtype_name, n):  # tensors are freed between sizes
                _print_kernels_row(row)
                rows.append(row)
    return {"command": "kernels", "env": environment(device), "rows": rows}


def _bench_size(args: argparse.Namespace, device: torch.device, dtype_name: str, n: int) -> List[Dict[str, Any]]:
    dtype = DTYPES[dtype_name]
    sizes = [n // args.blocks + (1 if i < n % args.blocks else 0) for i in range(args.blocks)]
    params = [torch.nn.Parameter(torch.zeros(s, dtype=dtype, device=device)) for s in sizes]
    space = ParamSpace([(f"layers.{i}.weight", p) for i, p in enumerate(params)])
    kernels.select(args.kernels, space)
    plan = Plan(seed=mix_seed(n), blocks=space.all_blocks())
    esize = params[0].element_size()
    flat_src = torch.zeros(n, dtype=dtype, device=device)
    flat_dst = torch.empty_like(flat_src)
    ops: Dict[str, Callable[[], None]] = {
        "copy_": lambda: flat_dst.copy_(flat_src),
        "perturb": lambda: kernels.perturb_(space, plan, 1e-3),
        "update": lambda: kernels.update_(space, plan, restore=1e-3, coef=1e-6, decay=1e-6),
        "mezo-style pass": lambda: mezo_style_pass(params, 0, 1e-3),
    }
    if dtype != torch.float32:
        ops["update (stochastic rounding)"] = lambda: kernels.update_(
            space, plan, restore=1e-3, coef=1e-6, decay=1e-6, stochastic=True)
    if args.stateful:
        buf, m, v = ([torch.zeros(s, device=device) for s in sizes] for _ in range(3))
        ops["update_momentum"] = lambda: kernels.update_momentum_(space, plan, 1e-3, 1.0, 1e-6, 0.9, buf)
        ops["update_adam"] = lambda: kernels.update_adam_(space, plan, 1e-3, 1.0, 1e-6, m, v, 1)
    state_bytes = {"update_momentum": 8, "update_adam": 16}  # fp32 state read and written per element
    times = {name: _median_s(fn, device, args.repeat) for name, fn in ops.items()}
    rows = []
    for name, sec in times.items():
        nbytes = n * (2 * esize + state_bytes.get(name, 0))
        rows.append({"dtype": dtype_name, "numel": n, "blocks": args.blocks, "op": name, "ms": sec * 1e3,
                     "GB/s": nbytes / sec / 1e9, "of_copy": times["copy_"] / sec * (nbytes / (2 * n * esize))})
    zorun_step = 2 * times["perturb"] + times["update"]
    mezo_step = 4 * times["mezo-style pass"]
    rows.append({"dtype": dtype_name, "numel": n, "blocks": args.blocks, "op": "step passes",
                 "zorun_ms": zorun_step * 1e3, "mezo_style_ms": mezo_step * 1e3, "speedup": mezo_step / zorun_step})
    return rows


def _print_kernels_header(env: Dict[str, Any]) -> None:
    print(f"zorun-bench kernels  device={env.get('gpu', env['device'])} torch={env['torch']} "
          f"triton={env['triton']} kernels={env['kernels']} threads={env['threads']}")
    print(f"{'dtype':<9} {'numel':>10} {'op':<30} {'ms':>10} {'GB/s':>8} {'of copy_':>9}", flush=True)


def _print_kernels_row(r: Dict[str, Any]) -> None:
    if r["op"] == "step passes":
        print(f"{r['dtype']:<9} {r['numel']:>10.0e}   per step: zorun 2 perturb + 1 fused update "
              f"{r['zorun_ms']:.2f} ms vs MeZO-style 4 passes {r['mezo_style_ms']:.2f} ms "
              f"-> {r['speedup']:.2f}x", flush=True)
    else:
        print(f"{r['dtype']:<9} {r['numel']:>10.0e} {r['op']:<30} {r['ms']:>10.3f} "
              f"{r['GB/s']:>8.1f} {100 * r['of_copy']:>8.0f}%", flush=True)


# --------------------------------------------------------------------- step
def _compose(overrides: List[str]):
    from hydra import compose, initialize_config_dir

    from zorun.cli import CONF_DIR, check_known_keys, one_line
    from zorun.config import validate
    from zorun.registry import check_combination

    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=["model=opt-125m", *overrides, "model.init=random"])
        check_known_keys(cfg)
        validate(cfg)
        check_combination(cfg)
    except Exception as ex:  # Hydra / OmegaConf / ConfigError: one line, exit 2
        raise ZorunError(one_line(ex)) from ex
    return cfg


def bench_step(args: argparse.Namespace) -> Dict[str, Any]:
    from zorun.models import load_model
    from zorun.registry import build_estimator, build_sampler

    cfg = _compose(args.overrides)
    model = load_model(cfg.model, cfg.seed)
    device = next(model.parameters()).device
    space = ParamSpace.from_model(model)
    kernels.select(cfg.kernels, space)
    samplers = args.samplers.split(",") if args.samplers else [str(cfg.sampler.name)]
    variants = {}  # one sampler + estimator per compared sampler, all on the same model and batch
    for name in samplers:
        variant_cfg = _compose([*args.overrides, f"sampler={name}"])
        variants[f"zorun {cfg.estimator.name}/{name}"] = (build_sampler(variant_cfg, space, cfg.seed),
                                                         build_estimator(variant_cfg, space))
    vocab = int(model.config.vocab_size)
    ids = torch.randint(vocab, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0)).to(device)

    @torch.no_grad()
    def loss() -> float:
        return float(model(input_ids=ids, labels=ids).loss)

    lr, eps, wd = float(cfg.estimator.lr), float(cfg.estimator.eps), float(cfg.estimator.weight_decay)
    params = [b.tensor for b in space.blocks]
    decayed = [b.decay for b in space.blocks]

    def reference_step(seed: int, clock: Clock) -> None:
        """MeZO-style SPSA step: 3 perturbation passes and 1 update pass, each regenerating z with torch.normal."""
        with clock("perturb"):
            mezo_style_pass(params, seed, eps)
        with clock("forward"):
            lp = loss()
        with clock("perturb"):
            mezo_style_pass(params, seed, -2 * eps)
        with clock("forward"):
            lm = loss()
        with clock("perturb"):
            mezo_style_pass(params, seed, eps)
        g = (lp - lm) / (2 * eps)
        with clock("update"):
            torch.manual_seed(seed)
            for p, d in zip(params, decayed):
                z = torch.normal(mean=0.0, std=1.0, size=p.size(), device=p.device, dtype=p.dtype)
                p.data = p.data - lr * (g * z + wd * p.data) if d and wd else p.data - lr * g * z

    def zorun_step(name: str, step: int, clock: Clock) -> torch.Tensor:
        """One step of a variant; returns the blocks it perturbed and updated."""
        sampler, estimator = variants[name]
        plan = sampler.plan(step)
        result = estimator.step(plan, loss, lr, clock)
        sampler.observe(plan, result)
        return plan.blocks

    names = [*variants, REFERENCE]
    clocks = {name: Clock(sync_cuda=device.type == "cuda") for name in names}
    walls = {name: 0.0 for name in names}
    written = {name: 0 for name in names}  # elements perturbed and updated per step
    for step in range(args.warmup + args.steps):
        shift = step % len(names)  # rotate who goes first, so drift on a shared machine hits all alike
        for name in names[shift:] + names[:shift]:
            clock = clocks[name] if step >= args.warmup else Clock(sync_cuda=device.type == "cuda")
            _sync(device)
            start = time.perf_counter()
            if name == REFERENCE:
                reference_step(mix_seed(cfg.seed, step), clock)
                blocks = space.all_blocks()
            else:
                blocks = zorun_step(name, step, clock)
            _sync(device)
            if step >= args.warmup:
                walls[name] += time.perf_counter() - start
                written[name] += sum(space.blocks[int(b)].numel for b in blocks)  # counted outside the timing
    figures = {}
    for name, clock in clocks.items():
        per = {k: clock.totals[k] / args.steps for k in ("forward", "perturb", "update")}
        per["step"] = walls[name] / args.steps
        per["other"] = per["step"] - per["forward"] - per["perturb"] - per["update"]
        per["step_over_2fwd"] = per["step"] / per["forward"]  # forward holds both passes of a step
        per["perturb_update_share"] = (per["perturb"] + per["update"]) / per["step"]
        per["elements_frac"] = written[name] / (args.steps * space.numel)
        figures[name] = per
    first = next(iter(variants))
    result = {
        "command": "step", "env": environment(device),
        "model": cfg.model.name, "dtype": str(getattr(cfg.model.dtype, "value", cfg.model.dtype)),
        "params": space.numel, "tensors": len(space), "batch": args.batch, "seq_len": args.seq_len,
        "estimator": cfg.estimator.name, "samplers": samplers, "steps": args.steps, "figures": figures,
        "speedup": {name: figures[REFERENCE]["step"] / figures[name]["step"] for name in variants},
        "perturb_update_vs_first": {name: _pert_upd(figures[name]) / _pert_upd(figures[first]) for name in variants},
    }
    _print_step(result)
    return result


REFERENCE = "MeZO-style (4 x torch.normal)"


def _pert_upd(f: Dict[str, float]) -> float:
    return f["perturb"] + f["update"]


def _print_step(r: Dict[str, Any]) -> None:
    env = r["env"]
    print(f"zorun-bench step  {r['model']} ({r['params'] / 1e6:.1f}M parameters in {r['tensors']} tensors, "
          f"{r['dtype']}) batch {r['batch']} x {r['seq_len']} tokens, {r['steps']} steps each, "
          f"device={env.get('gpu', env['device'])} threads={env['threads']} torch={env['torch']} "
          f"triton={env['triton']} kernels={env['kernels']}")
    print(f"{'per step (s)':<32} {'forward':>8} {'perturb':>8} {'update':>8} {'other':>8} {'step':>8} "
          f"{'step/2fwd':>10} {'pert+upd':>9} {'elements':>9}")
    for name, f in r["figures"].items():
        print(f"{name:<32} {f['forward']:>8.3f} {f['perturb']:>8.3f} {f['update']:>8.3f} "
              f"{f['other']:>8.3f} {f['step']:>8.3f} {f['step_over_2fwd']:>10.3f} "
              f"{100 * f['perturb_update_share']:>8.0f}% {f['elements_frac']:>9.3f}")
    first = next(iter(r["perturb_update_vs_first"]))
    for name, speedup in r["speedup"].items():
        line = f"{name}: {speedup:.2f}x the MeZO-style step's speed"
        if name != first:
            line += f"; perturb+update time {r['perturb_update_vs_first'][name]:.3f}x {first}'s"
        print(line)


# --------------------------------------------------------------------- main
def bench_memory(args: argparse.Namespace) -> Dict[str, Any]:
    """Peak memory of one training step per method next to one inference forward on the same batch (own processes)."""
    from zorun.memory import compare

    cfg = _compose(args.overrides)  # a bad override is one line before any process starts
    overrides = ["model=opt-125m", *args.overrides, "model.init=random"]
    methods = [m for m in args.methods.split(",") if m]
    result = compare(overrides, methods)
    fwd = result["forward"]
    mib = 2 ** 20
    print(f"zorun-bench memory  {cfg.model.name} (random init, {getattr(cfg.model.dtype, 'value', cfg.model.dtype)}) "
          f"batch {cfg.budget.batch_size} of task={cfg.task.name}, device={_device(cfg.model.device)}; "
          f"parameters {fwd['param_bytes'] / mib:.1f} MiB")
    print(f"{'method':<28} {'peak MiB':>10} {'x forward':>10} {'extra state MiB':>16}")
    print(f"{'inference forward (no grad)':<28} {fwd['peak_bytes'] / mib:>10.1f} {1.0:>10.3f} {0.0:>16.1f}")
    for method, step in result["steps"].items():
        step["ratio"] = step["peak_bytes"] / fwd["peak_bytes"]
        print(f"{method:<28} {step['peak_bytes'] / mib:>10.1f} {step['ratio']:>10.3f} "
              f"{step['state_bytes'] / mib:>16.1f}")
    return {"command": "memory", "overrides": overrides, **result}


def bench_scaling(args: argparse.Namespace) -> Dict[str, Any]:
    """Training throughput of data-parallel ZO: the same run under torchrun with 1, 2, ... processes."""
    import os
    import socket
    import subprocess
    import tempfile
    from pathlib import Path

    cfg = _compose(args.overrides)
    try:
        counts = [int(n) for n in args.nprocs.split(",")]
    except ValueError:
        raise ZorunError(f"--nprocs={args.nprocs}: expected comma-separated process counts such as 1,2")
    if min(counts) < 1 or max(counts) > cfg.budget.batch_size:
        raise ZorunError(f"--nprocs must be between 1 and budget.batch_size={cfg.budget.batch_size}")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads or 1)}
    overrides = ["model=opt-125m", *args.overrides, "model.init=random", f"budget.steps={args.steps}",
                 "budget.checkpoint_every=0", "task.num_dev=0", "task.num_test=0", "logger=none",
                 "logger.progress=false"]
    print(f"zorun-bench scaling  {cfg.model.name} (random init) {cfg.estimator.name}/{cfg.sampler.name}, global batch "
          f"{cfg.budget.batch_size} of task={cfg.task.name}, {args.steps} steps, {env['OMP_NUM_THREADS']} thread(s) "
          f"per process, torch={torch.__version__}")
    print(f"{'processes':>9} {'s / step':>9} {'forward':>8} {'pert+upd':>9} {'examples/s':>11} {'speed-up':>9}",
          flush=True)
    rows: List[Dict[str, Any]] = []
    for n in counts:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        run_dir = Path(tempfile.mkdtemp(prefix=f"zorun-scaling-{n}-"))
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", f"--master_port={port}",
               "-m", "zorun", *overrides, f"hydra.run.dir={run_dir}"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ZorunError(f"the {n}-process run failed (exit {proc.returncode}): "
                             f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no output'}")
        summary = json.loads((run_dir / "summary.json").read_text())
        train_s = sum(summary["time_s"].get(k, 0.0) for k in ("forward", "perturb", "update", "sampler"))  # rank 0's
        times, steps = summary["time_s"], summary["steps"]
        row = {"processes": n, "step_s": train_s / steps, "forward_s": times["forward"] / steps,
               "perturb_update_s": (times["perturb"] + times["update"]) / steps,
               "examples_per_s": steps * cfg.budget.batch_size / train_s}
        row["speedup"] = row["examples_per_s"] / rows[0]["examples_per_s"] if rows else 1.0
        rows.append(row)
        print(f"{n:>9} {row['step_s']:>9.3f} {row['forward_s']:>8.3f} {row['perturb_update_s']:>9.3f} "
              f"{row['examples_per_s']:>11.2f} {row['speedup']:>9.2f}", flush=True)
    return {"command": "scaling", "overrides": overrides, "env": environment(torch.device("cpu")), "rows": rows}


def networks_size(preset: str) -> Dict[str, Any]:
    """PertNN's networks for a preset's architecture: blocks from a meta-device model (no weights, no
    download), parameter bytes in fp16 and fp32, and the size of zorun's safetensors file for them."""
    import tempfile

    from omegaconf import OmegaConf
    from transformers import AutoConfig, AutoModelForCausalLM

    from zorun.samplers.pertnn import BlockNets
    from zorun.samplers.pertnn_io import save

    cfg = _compose([f"model={preset}"])
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


def _device(name: str) -> torch.device:
    from zorun.models.loading import resolve_device

    return resolve_device(name)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="zorun-bench", description="zorun speed benchmarks (print figures, optional JSON)")
    sub = ap.add_subparsers(dest="command", required=True)

    k = sub.add_parser("kernels", help="GB/s of perturb/update passes vs copy_ and a MeZO-style pass")
    k.add_argument("--sizes", default="1e6,1e7", help="comma-separated element counts (default 1e6,1e7)")
    k.add_argument("--dtypes", default="float32,bfloat16", help=f"comma-separated, of {', '.join(DTYPES)}")
    k.add_argument("--blocks", type=int, default=8, help="split each size over this many tensors (one launch)")
    k.add_argument("--stateful", action="store_true", help="also time update_momentum_ and update_adam_")
    k.add_argument("--repeat", type=int, default=5)
    k.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    k.add_argument("--kernels", default="auto", choices=kernels.BACKENDS)
    k.set_defaults(run=bench_kernels)

    s = sub.add_parser("step", help="zorun's step vs a MeZO-style step on a random-init preset")
    s.add_argument("overrides", nargs="*", help="zorun config overrides, e.g. model=opt-1.3b model.dtype=bfloat16")
    s.add_argument("--batch", type=int, default=4)
    s.add_argument("--seq-len", type=int, default=128)
    s.add_argument("--steps", type=int, default=5, help="measured steps per method")
    s.add_argument("--samplers", default=None,
                   help="compare these samplers side by side, e.g. uniform,adalezo (default: the configured one)")
    s.add_argument("--warmup", type=int, default=1)
    s.set_defaults(run=bench_step)

    m = sub.add_parser("memory", help="peak memory of one training step per method vs one inference forward, same batch")
    m.add_argument("overrides", nargs="*", help="zorun config overrides (default model=opt-125m, always random init)")
    m.add_argument("--methods", default="mezo/uniform,mezo/adalezo",
                   help="comma-separated ESTIMATOR/SAMPLER, e.g. mezo/uniform,zo-adam/uniform,fo-adam/uniform")
    m.set_defaults(run=bench_memory)

    sc = sub.add_parser("scaling", help="data-parallel throughput: the same run under torchrun with 1, 2, ... processes")
    sc.add_argument("overrides", nargs="*", help="zorun config overrides (default model=opt-125m, always random init)")
    sc.add_argument("--nprocs", default="1,2", help="comma-separated process counts (default 1,2)")
    sc.add_argument("--steps", type=int, default=10, help="training steps per run")
    sc.set_defaults(run=bench_scaling)

    pn = sub.add_parser("pertnn", help="PertNN meta-training peak memory vs its first-order teacher; networks' size")
    pn.add_argument("overrides", nargs="*", help="zorun-metatrain overrides, e.g. model=opt-125m model.init=random")
    pn.add_argument("--size-preset", default="opt-30b", help="model preset whose networks' size is computed (no download)")
    pn.set_defaults(run=bench_pertnn)

    ck = add_checkpoint_parser(sub)

    for p in (k, s, m, sc, pn, ck):
        p.add_argument("--json", default=None, help="also write the figures to this JSON file")
        p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return ap


def main(argv: Optional[List[str]] = None) -> None:
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if any(getattr(args, k, 1) < 1 for k in ("repeat", "steps", "batch", "seq_len", "blocks")):
        print("zorun-bench: error: --repeat, --steps, --batch, --seq-len and --blocks must be >= 1", file=sys.stderr)
        sys.exit(2)
    try:
        result = args.run(args)
    except ZorunError as err:
        print(f"zorun-bench: error: {err}", file=sys.stderr)
        sys.exit(2)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
