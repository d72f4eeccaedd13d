"""zorun-export: a from_pretrained folder of any step of a run (zorun.export)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

from zorun import export
from zorun.errors import ZorunError


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="zorun-export", description=export.__doc__.split("\n\n")[2])
    parser.add_argument("run_dir", type=Path, help="a zorun run directory (with .hydra/)")
    parser.add_argument("--step", type=int, default=None, help="the step to export (default: the last one)")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: RUN_DIR/export/step-N)")
    parser.add_argument("--device", default=None, help="override model.device (the run's by default: a replay is "
                                                       "bit for bit on the device and kernels the run used)")
    parser.add_argument("--merge", action="store_true",
                        help="peft LoRA runs: write the merged model instead of the adapter")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        export.export(args.run_dir, args.step, args.out, args.device, args.merge)
    except ZorunError as err:
        print(f"zorun-export: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
