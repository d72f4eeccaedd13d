"""zorun-bench kernels: GB/s of the perturb and update passes against copy_ of the same bytes and a MeZO-style pass."""

from __future__ import annotations

import argparse
from typing import Any, Callable, Dict, List

import torch

from zorun import kernels
from zorun.bench.common import DTYPES, device_of, environment, median_s
from zorun.errors import ZorunError
from zorun.params import ParamSpace
from zorun.plan import Plan, mix_seed


def mezo_style_pass(params: List[torch.Tensor], seed: int, alpha: float) -> None:
    """One MeZO-style pass: reseed the global generator, then θ ← θ + α·z per tensor with a fresh z."""
    torch.manual_seed(seed)
    for p in params:
        z = torch.normal(mean=0.0, std=1.0, size=p.size(), device=p.device, dtype=p.dtype)
        p.data = p.data + alpha * z


def bench_kernels(args: argparse.Namespace) -> Dict[str, Any]:
    device = device_of(args.device)
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
    times = {name: median_s(fn, device, args.repeat) for name, fn in ops.items()}
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
