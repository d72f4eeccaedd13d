"""zorun-replay: the fine-tuned parameters from the base model and the run's trajectory log (zorun.replay)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List

from zorun import replay
from zorun.errors import ZorunError


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="zorun-replay", description=replay.__doc__.split("\n\n")[1])
    parser.add_argument("run_dir", type=Path, help="a zorun run directory (with .hydra/ and trajectory.jsonl)")
    parser.add_argument("--steps", type=int, default=None, help="replay steps 0..N-1 only (default: all logged)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the parameters "
                                                               "(default: RUN_DIR/replayed.safetensors)")
    parser.add_argument("--device", default=None, help="override model.device (the run's by default)")
    parser.add_argument("--atol", type=float, default=0.0,
                        help="allowed max |difference| to the checkpoint (default 0: bit for bit)")
    args = parser.parse_args(argv)
    try:
        code = replay.run_replay(args.run_dir, args.steps, args.out, args.device, args.atol)
    except ZorunError as err:
        print(f"zorun-replay: error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


if __name__ == "__main__":
    main()
