"""zorun-pertnn: convert the PertNN networks the ZO Fine-tuner authors released to zorun's safetensors format."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from zorun.errors import ZorunError
from zorun.samplers.pertnn_io import import_released, read


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="zorun-pertnn", description="PertNN networks: convert released checkpoints")
    sub = ap.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="convert the authors' pickled dict name -> nn.Sequential to safetensors")
    imp.add_argument("src", help="the released .pth file")
    imp.add_argument("out", help="the .safetensors file to write")
    imp.add_argument("--trust-pickle", action="store_true",
                     help="allow unpickling SRC (a pickle can run arbitrary code: only for files you trust)")
    imp.add_argument("--base-model", default="unknown", help="the base model's hub id, recorded in the metadata")
    args = ap.parse_args(argv)
    try:
        path = import_released(args.src, args.out, args.trust_pickle, args.base_model)
    except ZorunError as err:
        print(f"zorun-pertnn: error: {err}", file=sys.stderr)
        sys.exit(2)
    meta, _ = read(path)
    print(f"wrote {path}: {len(meta['blocks'])} networks for {meta['base_model']}; "
          f"use with: zorun sampler=pertnn sampler.checkpoint={path}")


if __name__ == "__main__":
    main()
