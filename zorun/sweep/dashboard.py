"""report.html: a sweep's report as one self-contained interactive page, for reviewing a grid offline.

Plotly draws the figures: it writes standalone HTML with its JavaScript
inlined once (so the page opens without a network), a click on a legend entry
toggles a method on and off, and it is a maintained library. The tables are
plain HTML that a click on a column header sorts (a few lines of script: not
worth a dependency). The page holds the results table (n per cell), every
job, train loss against step and against seconds, the time breakdown,
AdaLeZO's layer heat maps, LDSD's and PertNN's diagnostics where those
samplers ran, time-to-target (zorun-report --target), failures and n/a pairs.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, List, Optional, Sequence

import plotly.colors
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from zorun.sweep.results import Results, read_records
from zorun.sweep.time_to_target import COLUMNS

NAME = "report.html"
PLOT_CONFIG = {"displaylogo": False, "responsive": True}

SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach((th, col) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0];
  const asc = th.dataset.order !== "asc";
  th.closest("tr").querySelectorAll("th").forEach(h => delete h.dataset.order);
  th.dataset.order = asc ? "asc" : "desc";
  const key = td => td.dataset.sort !== undefined ? Number(td.dataset.sort) : td.textContent.trim();
  const order = (a, b) => typeof a === "number" && typeof b === "number" ? a - b : String(a).localeCompare(String(b));
  Array.from(body.rows).sort((a, b) => order(key(a.cells[col]), key(b.cells[col])) * (asc ? 1 : -1))
    .forEach(row => body.appendChild(row));
}));
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; cursor: pointer; user-select: none; }
th[data-order="asc"]::after { content: " ▲"; } th[data-order="desc"]::after { content: " ▼"; }
td.text, th.text { text-align: left; } td.best { font-weight: bold; color: #116611; }
.note { color: #666; font-size: 0.9em; }
"""


def _num(value: Any) -> Optional[float]:
    finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if finite else None


def _cell(value: Any, text: Optional[str] = None, css: str = "") -> str:
    """A <td> showing `text` (default: the value); numbers carry their value as the sort key, blanks sort first."""
    number = _num(value)
    if text is None:
        text = "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
    attrs = f' data-sort="{number!r}"' if number is not None else ' data-sort="-Infinity"' if value is None else ""
    classes = " ".join(c for c in (css, "text" if number is None and value is not None else "") if c)
    if classes:
        attrs += f' class="{classes}"'
    return f"<td{attrs}>{html.escape(text)}</td>"


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "\n".join(f"<tr>{''.join(row)}</tr>" for row in rows)
    return f'<table class="sortable" id="{table_id}"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'


def _figure(fig: go.Figure) -> str:
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, config=PLOT_CONFIG)


# ----------------------------------------------------------------- sections
def results_table(report: Results) -> str:
    """One row per model x task x method: the dev-selected setting's test metric, n seeds, dev, the setting."""
    rows = []
    for (model, task), row in report.cells.items():
        for method, cell in row.items():
            rows.append([_cell(model), _cell(task), _cell(method),
                         _cell(cell.mean * 100, cell.text(), "best" if cell.best else ""),
                         _cell(cell.std * 100 if cell.n > 1 else None, f"{cell.std * 100:.1f}" if cell.n > 1 else ""),
                         _cell(cell.n), _cell(None if cell.dev is None else cell.dev * 100,
                                              "" if cell.dev is None else f"{cell.dev * 100:.1f}"),
                         _cell(cell.label or "(defaults)")])
    for method, reason in sorted(report.not_applicable.items()):
        rows.append([_cell(""), _cell(""), _cell(method), _cell(None, "n/a"), _cell(None), _cell(0), _cell(None),
                     _cell(reason)])
    metric = report.metric
    columns = ["model", "task", "method", f"test {metric} (%)", "std", "n", f"dev {metric} (%)", "selected setting"]
    return _table(columns, rows, "results")


def jobs_table(report: Results) -> str:
    columns, rows = report.job_rows()
    return _table(columns, [[_cell(v) for v in row] for row in rows], "jobs")


def loss_figure(report: Results, key) -> Optional[go.Figure]:
    """Train loss against step and against wall-clock seconds; one legend entry per method toggles both."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("train loss vs step", "train loss vs wall-clock (s)"))
    for i, method in enumerate(report.methods):
        curve = report.mean_curve(key, method)
        if curve is None:
            continue
        runs, steps, loss, wall = curve
        common = dict(mode="lines", legendgroup=method, line={"color": _colour(i)},
                      hovertemplate=f"{method} (n={runs})<br>%{{x}}: %{{y:.4f}}<extra></extra>")
        fig.add_trace(go.Scatter(x=steps, y=loss, name=f"{method} (n={runs})", **common), row=1, col=1)
        fig.add_trace(go.Scatter(x=wall, y=loss, showlegend=False, **common), row=1, col=2)
    if not fig.data:
        return None
    fig.update_xaxes(title_text="step", row=1, col=1)
    fig.update_xaxes(title_text="seconds", row=1, col=2)
    fig.update_yaxes(title_text="train loss")
    everything = [True] * len(fig.data)
    fig.update_layout(title=f"{key[0]} · {key[1]}: dev-selected setting, mean over seeds", height=480,
                      legend={"font": {"size": 10}},
                      margin={"t": 110},
                      updatemenus=[{"type": "buttons", "direction": "right", "x": 1, "y": 1.25, "xanchor": "right",
                                    "buttons": [{"label": "all methods", "method": "restyle",
                                                 "args": [{"visible": everything}]},
                                                {"label": "none", "method": "restyle",
                                                 "args": [{"visible": ["legendonly"] * len(fig.data)}]}]}])
    return fig


def _colour(i: int) -> str:
    palette = plotly.colors.qualitative.Dark24
    return palette[i % len(palette)]


def time_figure(report: Results) -> Optional[go.Figure]:
    """Mean seconds per job in each timing phase, stacked, one bar per method."""
    from zorun.timing import PHASES  # zorun.timing loads torch: only when a report is drawn

    by_method = report.phase_times()
    if not by_method:
        return None
    methods = sorted(by_method, reverse=True)
    fig = go.Figure([go.Bar(y=methods, x=[sum(t.get(phase, 0.0) for t in by_method[m]) / len(by_method[m])
                                         for m in methods], name=phase, orientation="h") for phase in PHASES])
    fig.update_layout(barmode="stack", title="time breakdown per method (mean seconds per job)",
                      height=max(320, 22 * len(methods) + 140), xaxis_title="seconds")
    return fig


def _job_name(report: Results, job_dir: Path) -> str:
    return job_dir.relative_to(report.root).as_posix()


def _selector(fig: go.Figure, labels: List[str], traces_per_item: int = 1) -> None:
    """A dropdown that shows one item's traces at a time (the first at start)."""
    n = len(labels)
    fig.update_layout(updatemenus=[{"x": 0, "y": 1.15, "xanchor": "left", "buttons": [
        {"label": label, "method": "update",
         "args": [{"visible": [j // traces_per_item == i for j in range(n * traces_per_item)]}]}
        for i, label in enumerate(labels)]}])


def _logs(report: Results, name: str):
    """(job, path) for each job that wrote the sampler log `name` (adalezo.jsonl, pertnn.jsonl)."""
    for job in report.jobs:
        path = job.dir / name
        if path.exists():
            yield job, path


def adalezo_figure(report: Results) -> Optional[go.Figure]:
    """AdaLeZO's layer probabilities (step x layer) per job, one job at a time."""
    from zorun.samplers.adalezo import read_probabilities  # the sampler's module loads torch

    labels, fig = [], go.Figure()
    for job, path in _logs(report, "adalezo.jsonl"):
        steps, probs = read_probabilities(path)
        fig.add_trace(go.Heatmap(x=steps, y=list(range(probs.shape[1])), z=probs.T, colorscale="Viridis",
                                 colorbar={"title": "p_l"}, visible=not labels))
        labels.append(_job_name(report, job.dir))
    if not labels:
        return None
    _selector(fig, labels)
    fig.update_layout(title="AdaLeZO layer probabilities of each step's draw (choose the job)", height=420,
                      xaxis_title="step", yaxis_title="layer (0 = embeddings, last = final norm / head)")
    return fig


def ldsd_figure(report: Results) -> Optional[go.Figure]:
    """LDSD's learned mean: ‖μ‖ per logged step, and cos(μ, −∇L) where sampler.cosine_every measured it."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("‖μ‖", "cos(μ, −∇L)"))
    for i, job in enumerate(j for j in report.jobs if j.config.sampler.name == "ldsd"):
        records = [r for r in read_records(job.dir) if r.get("mu_norm") is not None]
        if not records:
            continue
        name = _job_name(report, job.dir)
        common = dict(mode="lines", legendgroup=name, line={"color": _colour(i)})
        fig.add_trace(go.Scatter(x=[r["step"] for r in records], y=[r["mu_norm"] for r in records], name=name,
                                 **common), row=1, col=1)
        cos = [r for r in records if r.get("cos") is not None]
        if cos:
            fig.add_trace(go.Scatter(x=[r["step"] for r in cos], y=[r["cos"] for r in cos], showlegend=False,
                                     **common), row=1, col=2)
    if not fig.data:
        return None
    fig.update_xaxes(title_text="step")
    fig.update_layout(title="LDSD diagnostics per job", height=440, legend={"font": {"size": 9}})
    return fig


def pertnn_figure(report: Results) -> Optional[go.Figure]:
    """PertNN's effective per-block scales s_b = f·σ_b over the logged steps, per job (pertnn.jsonl)."""
    labels, fig = [], go.Figure()
    for job, path in _logs(report, "pertnn.jsonl"):
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not records:
            continue
        blocks = records[0].get("blocks") or [str(b) for b in range(len(records[0]["sigma"]))]
        z = [[r["factor"] * r["sigma"][b] for r in records] for b in range(len(blocks))]
        fig.add_trace(go.Heatmap(x=[r["step"] for r in records], y=blocks, z=z, colorscale="Magma",
                                 colorbar={"title": "s_b"}, visible=not labels))
        labels.append(_job_name(report, job.dir))
    if not labels:
        return None
    _selector(fig, labels)
    fig.update_layout(title="PertNN effective perturbation scale per block (choose the job)",
                      height=max(420, 16 * len(fig.data[0].y) + 160), xaxis_title="step")
    return fig


def target_table(report: Results) -> str:
    labels = ("model", "task", "method", "setting")
    rows = [[_cell(text) if column in labels else _cell(_maybe_number(text), text)
             for column, text in zip(COLUMNS, row.cells())] for row in report.target_rows]
    return _table(COLUMNS, rows, "time-to-target")


def _maybe_number(text: str) -> Optional[float]:
    """A table cell's leading number ('123 ± 4' -> 123.0, '2/2' -> 2.0, '1.5x' -> 1.5) as its sort key; else None."""
    head = text.split(" ")[0].split("/")[0].rstrip("x")
    try:
        return float(head)
    except ValueError:
        return None


# ---------------------------------------------------------------------- page
def render(report: Results) -> str:
    sections: List[str] = []
    completed = sum(job.status == "completed" for job in report.jobs)
    title = f"zorun report: {report.root}" + (f" · sweep {report.sweep}" if report.sweep is not None else "")
    sections.append(f"<h1>{html.escape(title)}</h1>")
    sections.append(f'<p class="note">{len(report.jobs)} jobs: {completed} completed, {len(report.failed)} failed, '
                    f"{sum(job.status == 'incompatible' for job in report.jobs)} n/a. Test {report.metric} at the "
                    f"step each run selected on dev, mean ± std (n) over seeds, for the hyperparameter setting with the "
                    f"best mean dev {report.metric}; bold: best for its model and task. Click a column to sort; click a "
                    f"legend entry to hide or show a method.</p>")
    sections.append("<h2>Results</h2>" + (results_table(report) if report.cells or report.not_applicable
                                          else "<p>No completed job reports a test metric.</p>"))
    if report.target_rows:
        sections.append(f"<h2>Time to target: {html.escape(str(report.target))}</h2>"
                        '<p class="note">steps and training seconds (without set-up, evaluation and checkpoints) at '
                        "the first logged point that reaches the target; speed-up against the base method.</p>"
                        + target_table(report))
    figures = [("Train loss", [loss_figure(report, key) for key in report.cells]),
               ("Time breakdown", [time_figure(report)]),
               ("AdaLeZO", [adalezo_figure(report)]),
               ("LDSD", [ldsd_figure(report)]),
               ("PertNN", [pertnn_figure(report)])]
    for heading, figs in figures:
        figs = [f for f in figs if f is not None]
        if figs:
            sections.append(f"<h2>{heading}</h2>" + "".join(_figure(f) for f in figs))
    if report.failed:
        sections.append(f"<h2>Failed jobs ({len(report.failed)})</h2><ul>" + "".join(
            f"<li><code>{html.escape(job.dir.name)}</code>: {html.escape(job.status)}: {html.escape(job.error)}</li>"
            for job in report.failed) + "</ul>")
    sections.append(f"<h2>Jobs ({len(report.jobs)})</h2><details><summary>every job</summary>{jobs_table(report)}"
                    "</details>")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style><script>{get_plotlyjs()}</script></head>\n<body>\n" + "\n".join(sections)
            + f"\n<script>{SORT_SCRIPT}</script>\n</body></html>\n")


def write_dashboard(report: Results) -> Path:
    path = report.out_dir / NAME
    path.write_text(render(report), encoding="utf-8")
    return path
