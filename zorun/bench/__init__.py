"""zorun-bench: commands that print (and optionally save as JSON) speed figures.

    zorun-bench kernels [--sizes 1e6,1e7] [--dtypes float32,bfloat16]
        GB/s of zorun's perturb and update passes against a plain copy_ of the
        same bytes (the bandwidth roofline) and against a MeZO-style pass
        (torch.normal into a fresh tensor, then θ + ε·z), one process, one table.
    zorun-bench pertnn [metatrain overrides ...] [--size-preset opt-30b]
        peak memory of one PertNN meta-training iteration (meta-step + teacher
        step) against the first-order teacher step alone, same model and batch,
        each in its own process; and the size of the networks for a preset.
    zorun-bench step [overrides ...] [--samplers uniform,adalezo] [--estimators mezo,zo-adam] [--batch 4] [--seq-len 128]
        zorun's estimator step for each listed estimator and sampler beside
        reference steps written from the peers' algorithms: MeZO's trainer
        step (four torch.normal passes per tensor, λ·θ always computed) and,
        with zo-adam, ZO-Bench's (z materialised as .grad, torch.optim.Adam),
        rotated step by step on the same random-init model and batch: medians
        of forward / perturb / update, the step's spread, step / (2 × forward),
        the share of elements each writes, the speed-up against the matching
        peer, and each variant's perturb+update time relative to the first's.
    zorun-bench rounding [overrides ...] [--dtype bfloat16] [--steps 200]
        the same run in fp32, in 16 bits with stochastic rounding and in 16
        bits rounded to nearest: loss curves and parameter drift from fp32.
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

Timings use the backend chosen with --kernels or kernels= (auto: Triton on CUDA,
numba on CPU) and synchronise CUDA around every timed region. One module per
command in this package.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

import torch

from zorun import kernels
from zorun.bench.common import DTYPES
from zorun.bench.bandwidth import bench_kernels
from zorun.bench.checkpoint import add_parser as add_checkpoint_parser
from zorun.bench.memory import bench_memory, bench_pertnn
from zorun.bench.rounding import bench_rounding
from zorun.bench.scaling import bench_scaling
from zorun.bench.step import bench_step
from zorun.errors import ZorunError


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

    s = sub.add_parser("step", help="zorun's step vs MeZO's and ZO-Bench's steps on a random-init preset")
    s.add_argument("overrides", nargs="*", help="zorun config overrides, e.g. model=opt-1.3b model.dtype=bfloat16")
    s.add_argument("--batch", type=int, default=4)
    s.add_argument("--seq-len", type=int, default=128)
    s.add_argument("--steps", type=int, default=5, help="measured steps per method")
    s.add_argument("--samplers", default=None,
                   help="compare these samplers side by side, e.g. uniform,adalezo (default: the configured one)")
    s.add_argument("--estimators", default=None, help="compare these estimators, e.g. mezo,zo-adam (zo-adam adds "
                   "ZO-Bench's Adam step; default: the configured one)")
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

    r = sub.add_parser("rounding", help="16-bit training with stochastic vs nearest rounding against fp32, same seed")
    r.add_argument("overrides", nargs="*", help="zorun config overrides, e.g. model=tiny estimator.lr=1e-4")
    r.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    r.add_argument("--steps", type=int, default=200, help="training steps per variant")
    r.add_argument("--every", type=int, default=20, help="print the losses every this many steps")
    r.set_defaults(run=bench_rounding)

    ck = add_checkpoint_parser(sub)

    for p in (k, s, m, sc, pn, r, ck):
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
