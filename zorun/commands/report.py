"""zorun-report: the command line of :mod:`zorun.sweep.report` (a sweep directory as a paper's table and plots)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from zorun.errors import ZorunError
from zorun.sweep import report as report_module
from zorun.sweep.report import build_reports
from zorun.sweep.time_to_target import Target


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="zorun-report", description=report_module.__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory (hydra.sweep.dir)")
    parser.add_argument("--metric", help="test/dev metric of the table (default: accuracy, else f1, else em)")
    parser.add_argument("--target", metavar="METRIC=VALUE",
                        help="add steps and training seconds to reach a dev metric (accuracy=0.9) or a train loss "
                             "(train_loss=0.3), with each sampler's speed-up over its base estimator")
    parser.add_argument("--merge", action="store_true",
                        help="one report for a directory that holds several sweeps (e.g. MeZO's Table 1 parts), "
                             "instead of one per sweep")
    args = parser.parse_args(argv)
    try:
        target = Target.parse(args.target) if args.target else None
    except ZorunError as err:
        print(f"zorun-report: error: {err}", file=sys.stderr)
        sys.exit(2)
    if not args.sweep_dir.is_dir():
        print(f"zorun-report: error: {args.sweep_dir} is not a directory; pass a multirun directory "
              "such as outputs/multirun/smoke", file=sys.stderr)
        sys.exit(2)
    try:
        reports = build_reports(args.sweep_dir, args.metric, target, args.merge)
    except ZorunError as err:
        print(f"zorun-report: error: {err}", file=sys.stderr)
        sys.exit(2)
    if not reports[0].jobs:
        print(f"zorun-report: error: no job directories (with .hydra/config.yaml) under {args.sweep_dir}",
              file=sys.stderr)
        sys.exit(2)
    for report in reports:
        report.write()
        report.print()
    if len(reports) > 1:
        print(f"zorun-report: {args.sweep_dir} holds {len(reports)} sweeps (launch commands): "
              + "; ".join(f"{r.sweep} ({len(r.jobs)} jobs) -> {r.out_dir}" for r in reports)
              + "; --merge reports them as one")


if __name__ == "__main__":
    main()
