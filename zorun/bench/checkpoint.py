"""zorun-bench checkpoint: what the sha256 of every checkpoint file costs, on a preset's shape.

    zorun-bench checkpoint [overrides ...] [--repeat 3] [--dir DIR]

Saves the model's trainable parameters as a run's checkpoint (random init,
default model=opt-125m), then opens it as a resume does, and prints the
seconds of each part next to the seconds spent hashing: the checksum share
of a save (the digests are taken while the files are still in the page
cache) and of a load (every file read once more). Medians of --repeat.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict

from zorun import checkpoint as ck


def _median(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        ck._DIGESTS.clear()  # every figure hashes from scratch
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_checkpoint(args: argparse.Namespace) -> Dict[str, Any]:
    from zorun.models import load_model
    from zorun.params import ParamSpace
    from zorun.preflight import Source, check_job, composing

    with composing(Source.default()) as compose:
        cfg = compose(["model=opt-125m", *args.overrides, "model.init=random", "logger=none"])
    check_job(cfg)
    space = ParamSpace.from_model(load_model(cfg.model, cfg.seed))
    root = Path(tempfile.mkdtemp(prefix="zorun-bench-ckpt-", dir=args.dir))
    try:
        saver = ck.Checkpoints(root / "checkpoints", keep=1)
        meta, state = {"config": {}, "logs": {}}, {"rng": ck.rng_state()}
        path = saver.save(0, space, meta, state)
        files = [path / name for name in (ck.PARAMS, ck.STATE, ck.META)]
        total = sum(f.stat().st_size for f in files)
        save_s = _median(lambda: saver.save(0, space, meta, state), args.repeat)
        hash_s = _median(lambda: [ck.sha256(f) for f in files], args.repeat)
        open_s = _median(lambda: ck.Checkpoint.open(path), args.repeat)  # sizes + sha256 of every file
        opened = ck.Checkpoint.open(path)
        params_s = _median(lambda: opened.load_params(space), args.repeat)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load_s = open_s + params_s
    result = {"model": str(cfg.model.name), "dtype": str(getattr(cfg.model.dtype, "value", cfg.model.dtype)), "params": space.numel, "bytes": total,
              "save_s": save_s, "sha256_s": hash_s, "open_verify_s": open_s, "load_params_s": params_s,
              "sha256_GB_per_s": total / hash_s / 1e9, "save_share": hash_s / save_s, "load_share": open_s / load_s}
    _print(result, args.repeat)
    return result


def _print(r: Dict[str, Any], repeat: int) -> None:
    mb = r["bytes"] / 1e6
    print(f"checkpoint of {r['model']} ({r['params'] / 1e6:.1f}M trainable, {r['dtype']}): {mb:.1f} MB in 3 files; "
          f"medians of {repeat}")
    print(f"  sha256 of the files        {r['sha256_s']:8.3f} s   ({r['sha256_GB_per_s']:.2f} GB/s)")
    print(f"  save (write, fsync, sha256) {r['save_s']:7.3f} s   checksums {100 * r['save_share']:.0f}% of it; "
          f"without them {r['save_s'] - r['sha256_s']:.3f} s (x{r['save_s'] / max(r['save_s'] - r['sha256_s'], 1e-9):.2f})")
    print(f"  load: open + verify        {r['open_verify_s']:8.3f} s   + parameters {r['load_params_s']:.3f} s; "
          f"verification {100 * r['load_share']:.0f}% of the load")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("checkpoint", help="the cost of checkpoint checksums: save and load with their sha256 share")
    p.add_argument("overrides", nargs="*", help="zorun config overrides (default model=opt-125m, always random init)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dir", default=None, help="where the checkpoint is written (default: the system's temp dir)")
    p.set_defaults(run=bench_checkpoint)
    return p
