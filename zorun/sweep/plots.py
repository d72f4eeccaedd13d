"""The sweep report's PNG plots: loss against step and seconds, the time breakdown and each sampler's own figure
(AdaLeZO's layer heat maps), drawn with matplotlib for report.md and W&B images; report.html draws the same data
with plotly (:mod:`zorun.sweep.dashboard`).

matplotlib is imported in the functions: :func:`plot_all` selects the file-only Agg backend before pyplot loads,
and importing the report changes no one's backend. zorun.timing and the sampler registry load torch, which the
report needs only for these names, so they too are imported where used.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from zorun.sweep.results import Results


def plot_all(report: Results) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    plots = [plot_losses(report, key) for key in report.cells]
    plots.append(plot_time_breakdown(report))
    plots += plot_sampler_logs(report)
    return [p for p in plots if p is not None]


def _line_styles(methods: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """One colour per estimator and one dash pattern per sampler, so a method matrix stays legible."""
    import matplotlib.pyplot as plt

    colours = plt.get_cmap("tab10").colors
    parts = {m: m.partition("+")[::2] for m in methods}  # (estimator label, sampler or "")
    bases = sorted({base for base, _ in parts.values()})
    samplers = sorted({sampler for _, sampler in parts.values() if sampler})
    dashes = ["--", ":", "-."]
    return {m: {"color": colours[bases.index(base) % len(colours)],
                "linestyle": dashes[samplers.index(sampler) % len(dashes)] if sampler else "-"}
            for m, (base, sampler) in parts.items()}


def plot_losses(report: Results, key: Tuple[str, str]) -> Optional[Path]:
    """Train loss against step and against wall-clock, one line per method (mean over seeds)."""
    import matplotlib.pyplot as plt

    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    styles = _line_styles(report.methods)
    drawn = []
    for method in report.methods:
        curve = report.mean_curve(key, method)
        if curve is None:
            continue
        runs, steps, loss, wall = curve
        by_step.plot(steps, loss, label=f"{method} (n={runs})", **styles[method])
        by_time.plot(wall, loss, **styles[method])
        drawn += loss
    if not drawn:
        plt.close(fig)
        return None
    spread = min(drawn) > 0 and max(drawn) / min(drawn) > 20  # a diverging method would flatten the rest
    for ax, xlabel in ((by_step, "step"), (by_time, "wall-clock (s)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("train loss" + (" (log scale)" if spread else ""))
        ax.set_yscale("log" if spread else "linear")
        ax.grid(alpha=0.3)
    lines = len(by_step.get_lines())
    columns = 1 + (lines - 1) // 16  # at most 16 entries per legend column, beside the plots
    fig.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, ncol=columns, frameon=False)
    fig.set_figheight(max(4.0, 0.2 * min(lines, 16) + 1.0))
    fig.suptitle(f"{key[0]} · {key[1]}: train loss (dev-selected setting, mean over seeds)")
    fig.tight_layout()
    path = report.out_dir / f"loss_{key[0]}_{key[1]}.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_time_breakdown(report: Results) -> Optional[Path]:
    """Mean seconds per job in each timing phase, stacked, one bar per method."""
    import matplotlib.pyplot as plt

    from zorun.timing import PHASES

    by_method = report.phase_times()
    if not by_method:
        return None
    methods = sorted(by_method, reverse=True)  # horizontal bars, read top-down in name order
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.3 * len(methods) + 1.5)))
    left = [0.0] * len(methods)
    for phase in PHASES:
        widths = [statistics.fmean(t.get(phase, 0.0) for t in by_method[m]) for m in methods]
        ax.barh(methods, widths, left=left, label=phase)
        left = [a + w for a, w in zip(left, widths)]
    ax.set_xlabel("seconds per job (mean)")
    ax.set_title("time breakdown per method")
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    path = report.out_dir / "time_breakdown.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_sampler_logs(report: Results) -> List[Path]:
    """Each sampler's own figure (Sampler.plot_log: AdaLeZO's layer heat map) for every job that wrote its log."""
    from zorun.registry import SAMPLERS

    paths = []
    for name, sampler in sorted(SAMPLERS.items()):
        for job in report.jobs:
            log_path = job.dir / sampler.log_name if sampler.log_name else None
            if log_path is None or not log_path.exists():
                continue
            stem = job.dir.relative_to(report.root).as_posix().replace("/", "_")
            path = sampler.plot_log(log_path, report.out_dir / f"{name}_{stem}.png")
            if path is not None:
                paths.append(path)
    return paths
