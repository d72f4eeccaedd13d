"""AdaLeZO's layer probabilities over steps as a heat map, drawn from a run's adalezo.jsonl.

Used by the sweep report. Matplotlib's object-oriented API with the Agg
canvas (Figure.savefig), so no pyplot global state or display is involved.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Tuple

import numpy as np
from matplotlib.figure import Figure

from zorun.errors import ZorunError


def read_probabilities(jsonl_path) -> Tuple[np.ndarray, np.ndarray]:
    """(steps, probs) with probs of shape (steps, layers), from adalezo.jsonl."""
    path = Path(jsonl_path)
    if not path.is_file():
        raise ZorunError(f"{path} does not exist; it is written by runs with sampler=adalezo")
    steps, probs = [], []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                steps.append(int(record["step"]))
                probs.append([float(p) for p in record["probs"]])
            except (ValueError, KeyError, TypeError) as err:
                raise ZorunError(f"{path}:{number} is not an adalezo.jsonl record ({type(err).__name__}: {err})") from err
    if not steps:
        raise ZorunError(f"{path} has no steps; the run stopped before its first training step")
    if len({len(p) for p in probs}) != 1:
        raise ZorunError(f"{path} mixes records with different numbers of layers; was it appended to by two runs?")
    return np.asarray(steps), np.asarray(probs)


def plot_layer_probabilities(jsonl_path, png_path) -> Path:
    """Write a heat map (x: step, y: layer, colour: p_l of the step's draw) to png_path; return it."""
    steps, probs = read_probabilities(jsonl_path)
    n_layers = probs.shape[1]
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(probs.T, aspect="auto", origin="lower", interpolation="nearest", cmap="viridis",
                      extent=(steps[0] - 0.5, steps[-1] + 0.5, -0.5, n_layers - 0.5))
    ax.set_xlabel("step")
    ax.set_ylabel("layer (0 = embeddings,\nlast = final norm / head)")
    ax.set_title(f"AdaLeZO layer probabilities ({Path(jsonl_path).parent.name})", fontsize=9)
    fig.colorbar(image, ax=ax, label="$p_l$")
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=120)
    return png_path
