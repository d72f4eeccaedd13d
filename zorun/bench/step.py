"""zorun-bench step: zorun's estimator steps against reference steps written from the peers' algorithms.

All variants run on the same random-init model and batch, in one process,
rotating who goes first every step, so drift on a shared machine hits all
alike; each figure is the median over the measured steps, with the step
time's spread. The references:

- MeZO's trainer step: SPSA with four passes that each regenerate z with
  ``torch.normal`` into a fresh tensor, and an update that computes
  ``θ − lr·(g·z + λ·θ)`` with its full-size temporaries, λ·θ included even
  when λ = 0 (as MeZO's ``zo_update`` does);
- ZO-Bench's ZO-Adam step: the same perturbation passes, then z materialised
  once more as ``.grad = g·z`` for every parameter and a plain
  ``torch.optim.Adam`` step (run with ``--estimators ...,zo-adam``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable, Dict, List

import torch

from zorun import kernels
from zorun.bench.common import compose, environment, sync
from zorun.bench.bandwidth import mezo_style_pass
from zorun.params import ParamSpace
from zorun.plan import mix_seed
from zorun.timing import Clock

MEZO = "MeZO trainer (torch.normal x4)"
ZO_BENCH_ADAM = "ZO-Bench ZO-Adam (torch.optim.Adam)"
PHASES = ("forward", "perturb", "update")


def _references(params: List[torch.Tensor], decayed: List[bool], loss: Callable[[], float], lr: float, eps: float,
                wd: float, adam: bool) -> Dict[str, Callable[[int, Clock], None]]:
    """The reference steps, each timed phase by phase on the given clock."""

    def spsa(seed: int, clock: Clock) -> float:
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
        return (lp - lm) / (2 * eps)

    def mezo(seed: int, clock: Clock) -> None:
        g = spsa(seed, clock)
        with clock("update"):
            torch.manual_seed(seed)
            for p, d in zip(params, decayed):
                z = torch.normal(mean=0.0, std=1.0, size=p.size(), device=p.device, dtype=p.dtype)
                p.data = p.data - lr * (g * z + (wd if d else 0.0) * p.data)  # λ·θ computed even when λ = 0

    steps = {MEZO: mezo}
    if adam:
        opt = torch.optim.Adam(params, lr=lr, foreach=False)

        def zo_bench_adam(seed: int, clock: Clock) -> None:
            g = spsa(seed, clock)
            with clock("update"):
                torch.manual_seed(seed)
                for p in params:
                    z = torch.normal(mean=0.0, std=1.0, size=p.size(), device=p.device, dtype=p.dtype)
                    p.grad = g * z
                opt.step()
                opt.zero_grad(set_to_none=True)

        steps[ZO_BENCH_ADAM] = zo_bench_adam
    return steps


def bench_step(args: argparse.Namespace) -> Dict[str, Any]:
    from zorun.models import load_model
    from zorun.registry import build_estimator, build_sampler

    cfg = compose(args.overrides)
    model = load_model(cfg.model, cfg.seed)
    device = next(model.parameters()).device
    space = ParamSpace.from_model(model)
    kernels.select(cfg.kernels, space)
    samplers = args.samplers.split(",") if args.samplers else [str(cfg.sampler.name)]
    estimators = args.estimators.split(",") if args.estimators else [str(cfg.estimator.name)]
    variants = {}  # one sampler + estimator per compared pair, all on the same model and batch
    for est in estimators:
        for name in samplers:
            variant_cfg = compose([*args.overrides, f"estimator={est}", f"sampler={name}"])
            variants[f"zorun {est}/{name}"] = (build_sampler(variant_cfg, space, cfg.seed),
                                               build_estimator(variant_cfg, space))
    vocab = int(model.config.vocab_size)
    ids = torch.randint(vocab, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0)).to(device)

    @torch.no_grad()
    def loss() -> float:
        return float(model(input_ids=ids, labels=ids).loss)

    lr, eps, wd = float(cfg.estimator.lr), float(cfg.estimator.eps), float(cfg.estimator.weight_decay)
    references = _references([b.tensor for b in space.blocks], [b.decay for b in space.blocks], loss, lr, eps, wd,
                             adam="zo-adam" in estimators)

    def zorun_step(name: str, step: int, clock: Clock) -> torch.Tensor:
        """One step of a variant; returns the blocks it perturbed and updated."""
        sampler, estimator = variants[name]
        plan = sampler.plan(step)
        result = estimator.step(plan, loss, lr, clock)
        sampler.observe(plan, result)
        return plan.blocks

    names = [*variants, *references]
    per_step: Dict[str, List[Dict[str, float]]] = {name: [] for name in names}
    written = {name: 0 for name in names}  # elements perturbed and updated per step
    with torch.no_grad():
        for step in range(args.warmup + args.steps):
            shift = step % len(names)  # rotate who goes first
            for name in names[shift:] + names[:shift]:
                clock = Clock(sync_cuda=device.type == "cuda")
                sync(device)
                start = time.perf_counter()
                if name in references:
                    references[name](mix_seed(cfg.seed, step), clock)
                    blocks = space.all_blocks()
                else:
                    blocks = zorun_step(name, step, clock)
                sync(device)
                if step >= args.warmup:
                    per_step[name].append({**{k: clock.totals[k] for k in PHASES}, "step": time.perf_counter() - start})
                    written[name] += sum(space.blocks[int(b)].numel for b in blocks)  # counted outside the timing
    figures = {name: _figures(rows, written[name] / (args.steps * space.numel)) for name, rows in per_step.items()}
    first = next(iter(variants))
    result = {
        "command": "step", "env": environment(device),
        "model": cfg.model.name, "dtype": str(getattr(cfg.model.dtype, "value", cfg.model.dtype)),
        "params": space.numel, "tensors": len(space), "batch": args.batch, "seq_len": args.seq_len,
        "estimators": estimators, "samplers": samplers, "steps": args.steps, "figures": figures,
        "speedup": {name: figures[_reference_of(name)]["step"] / figures[name]["step"] for name in variants},
        "perturb_update_vs_first": {name: _pert_upd(figures[name]) / _pert_upd(figures[first]) for name in variants},
    }
    _print_step(result)
    return result


def _figures(rows: List[Dict[str, float]], elements_frac: float) -> Dict[str, float]:
    """Medians of each phase and of the step, the step's spread, and the derived ratios."""
    per = {k: statistics.median(r[k] for r in rows) for k in (*PHASES, "step")}
    per["step_min"], per["step_max"] = min(r["step"] for r in rows), max(r["step"] for r in rows)
    per["other"] = per["step"] - sum(per[k] for k in PHASES)
    per["step_over_2fwd"] = per["step"] / per["forward"]  # forward holds both passes of a step
    per["perturb_update_share"] = (per["perturb"] + per["update"]) / per["step"]
    per["elements_frac"] = elements_frac
    return per


def _reference_of(variant: str) -> str:
    """The peer step a zorun variant is compared with: ZO-Bench's for zo-adam, MeZO's for the others."""
    return ZO_BENCH_ADAM if variant.startswith("zorun zo-adam/") else MEZO


def _pert_upd(f: Dict[str, float]) -> float:
    return f["perturb"] + f["update"]


def _print_step(r: Dict[str, Any]) -> None:
    env = r["env"]
    print(f"zorun-bench step  {r['model']} ({r['params'] / 1e6:.1f}M parameters in {r['tensors']} tensors, "
          f"{r['dtype']}) batch {r['batch']} x {r['seq_len']} tokens, {r['steps']} steps each (medians), "
          f"device={env.get('gpu', env['device'])} threads={env['threads']} torch={env['torch']} "
          f"triton={env['triton']} kernels={env['kernels']}")
    print(f"{'per step (s)':<36} {'forward':>8} {'perturb':>8} {'update':>8} {'other':>8} {'step':>8} "
          f"{'min-max':>13} {'step/2fwd':>10} {'pert+upd':>9} {'elements':>9}")
    for name, f in r["figures"].items():
        print(f"{name:<36} {f['forward']:>8.3f} {f['perturb']:>8.3f} {f['update']:>8.3f} "
              f"{f['other']:>8.3f} {f['step']:>8.3f} {f['step_min']:>6.3f}-{f['step_max']:<6.3f} "
              f"{f['step_over_2fwd']:>10.3f} {100 * f['perturb_update_share']:>8.0f}% {f['elements_frac']:>9.3f}")
    first = next(iter(r["perturb_update_vs_first"]))
    for name, speedup in r["speedup"].items():
        line = f"{name}: {speedup:.2f}x the {_reference_of(name)} step's speed"
        if name != first:
            line += f"; perturb+update time {r['perturb_update_vs_first'][name]:.3f}x {first}'s"
        print(line)

