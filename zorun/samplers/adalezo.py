"""sampler=adalezo: a bandit picks the layers to perturb; inverse-probability weights keep ĝ unbiased.

AdaLeZO (Wang et al., "Universally Empowering Zeroth-Order Optimization via
Adaptive Layer-wise Sampling", ACL Findings 2026; docs/methods.md, docs/adalezo.md):

    p = (1 − γ)·softmax(ŝ/τ) + γ/N,  ŝ = r / max(r) if max(r) > 1e-6 else r
    k = max(1, ⌊k_ratio·N⌋) i.i.d. draws from p with replacement; A = distinct layers,
    c_l = multiplicity;  w_l = min(1/(k·p_l), clip)·c_l  for every block of l ∈ A
    r_l ← (1 − α)·r_l + α·|g|  for l ∈ A, once per step

The estimator perturbs and updates only the blocks of A (the kernels iterate
over Plan.blocks), so that work scales with |A|/N, and folds w_l into its
fused update. Because E[c_l] = k·p_l, E[w_l·1(l ∈ A)] = 1 without the clip:
E[w_l·g·z_l] is MeZO's E[g·z_l] for every layer, drawn this step or not.

The draws use their own torch.Generator (seeded from the run seed), so a run
is reproducible and state_dict() captures everything a resume needs. Each
step's draw goes to <run dir>/adalezo.jsonl; :meth:`AdaLeZOSampler.plot_log`
draws it as the sweep report's heat map.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from zorun.errors import ZorunError
from zorun.estimators.base import StepResult
from zorun.params import ParamSpace
from zorun.plan import Plan, mix_seed
from zorun.ranges import at_least, between, positive
from zorun.samplers.base import Sampler, SamplerConfig, register

LOG_NAME = "adalezo.jsonl"
WARM_FRACTION = 0.4  # warm_start favours the deepest 40% of layers (as the authors' code)


@dataclass
class AdaLeZOSamplerConfig(SamplerConfig):
    """sampler=adalezo; defaults are the paper's."""

    name: str = "adalezo"
    # draws per step k = max(1, floor(k_ratio * number of layers))
    k_ratio: float = between(0, 1, 0.2, ": the fraction of layers drawn per step", lo_open=True)
    # softmax temperature over the max-normalised EMA rewards
    tau: float = positive(0.2, "large values give a uniform policy")
    gamma: float = between(0, 1, 0.01)  # uniform floor: every layer keeps probability >= gamma / N
    ema_alpha: float = between(0, 1, 0.1, lo_open=True)  # EMA rate of the reward |g|
    ipw_clip: float = positive(10.0, "inf: no clip")  # cap on 1/(k*p_l); inf: no cap, exactly unbiased
    interval: int = at_least(1, 1)  # redraw the active layers every `interval` steps
    warm_start: bool = False  # start with the policy biased to the deepest 40% of layers


def depth_prior(num_layers: int) -> torch.Tensor:
    """Scores of warm_start: 1 for the deepest ⌈0.4·N⌉ layers (head layer included), 0 elsewhere."""
    prior = torch.zeros(num_layers, dtype=torch.float64)
    prior[num_layers - math.ceil(WARM_FRACTION * num_layers):] = 1.0
    return prior


def policy(rewards: torch.Tensor, tau: float, gamma: float) -> torch.Tensor:
    """p = (1 − γ)·softmax(ŝ/τ) + γ/N with ŝ the rewards normalised by their maximum."""
    top = float(rewards.max())
    scores = rewards / top if top > 1e-6 else rewards
    return (1.0 - gamma) * torch.softmax(scores / tau, dim=0) + gamma / rewards.numel()


def ipw_weights(probs: torch.Tensor, counts: torch.Tensor, k: int, clip: float) -> torch.Tensor:
    """w_l = min(1/(k·p_l), clip)·c_l, 0 where c_l = 0; broadcasts over leading dimensions of counts."""
    ipw = torch.clamp(1.0 / (k * probs), max=clip)
    return torch.where(counts > 0, ipw * counts, torch.zeros((), dtype=ipw.dtype))


@dataclass
class Draw:
    """One draw of the active layers, used from `step` until the next redraw."""

    step: int
    probs: torch.Tensor  # the policy the draw came from (float64, N)
    counts: torch.Tensor  # c_l: how often each layer was drawn (int64, N)

    def active(self) -> torch.Tensor:
        return self.counts.nonzero().flatten()


@register(AdaLeZOSamplerConfig)
class AdaLeZOSampler(Sampler):
    """The bandit over layers: plan() draws k layers from the policy, observe() updates the rewards."""

    log_name = LOG_NAME

    @classmethod
    def plot_log(cls, log_path, png_path) -> Path:
        return plot_layer_probabilities(log_path, png_path)

    def __init__(self, cfg, space: ParamSpace, seed: int):
        super().__init__(cfg, space, seed)
        n = space.num_layers
        self.k = max(1, math.floor(cfg.k_ratio * n))
        # plain numbers: read every step, and OmegaConf attribute access is slow in a tight loop
        self.tau, self.gamma, self.alpha = float(cfg.tau), float(cfg.gamma), float(cfg.ema_alpha)
        self.clip, self.interval = float(cfg.ipw_clip), int(cfg.interval)
        self.rewards = torch.zeros(n, dtype=torch.float64)
        self.observed = 0  # steps whose reward has been folded into self.rewards
        self.prior = depth_prior(n) if cfg.warm_start else None
        # A stream of its own: mix_seed(seed, -1) is no step's seed (steps are >= 0).
        self.generator = torch.Generator().manual_seed(mix_seed(seed, -1))
        self.layer_blocks = [torch.tensor(ids, dtype=torch.long) for ids in space.layer_blocks]
        self.layer_numel = torch.tensor([sum(space.blocks[b].numel for b in ids) for ids in space.layer_blocks],
                                        dtype=torch.float64)
        self.draw: Optional[Draw] = None
        self.step = -1

    # ---------------------------------------------------------------- policy
    def probabilities(self) -> torch.Tensor:
        """The current policy over layers. Before any reward, warm_start uses the depth prior as scores."""
        scores = self.prior if self.prior is not None and self.observed == 0 else self.rewards
        return policy(scores, self.tau, self.gamma)

    def weights(self, draw: Draw) -> torch.Tensor:
        return ipw_weights(draw.probs, draw.counts, self.k, self.clip)

    def redraw(self, step: int) -> Draw:
        probs = self.probabilities()
        picks = torch.multinomial(probs, self.k, replacement=True, generator=self.generator)
        return Draw(step, probs, torch.bincount(picks, minlength=probs.numel()))

    # ------------------------------------------------------------- interface
    def plan(self, step: int) -> Plan:
        if self.draw is None or step % self.interval == 0:
            self.draw = self.redraw(step)
        self.step = step
        weights = self.weights(self.draw)
        active = self.draw.active().tolist()
        blocks = torch.cat([self.layer_blocks[layer] for layer in active])
        block_weight = torch.cat([weights[layer].expand(len(self.layer_blocks[layer])) for layer in active])
        return Plan(seed=self.step_seed(step), blocks=blocks, weight=block_weight.float())

    def observe(self, plan: Plan, result: StepResult) -> None:
        reward = abs(float(result.grad))
        if self.prior is not None and self.observed == 0:
            self.rewards = self.prior * reward  # the depth prior in the units of |g|; fades like any reward
        active = self.draw.active()
        self.rewards[active] = (1.0 - self.alpha) * self.rewards[active] + self.alpha * reward
        self.observed += 1
        if self.log is not None:
            self.log.write(self.step_record(result.grad))

    def step_record(self, grad: float) -> Dict[str, Any]:
        """One line of adalezo.jsonl: the policy of this step's draw, A with c_l and w_l, rewards after the step."""
        active = self.draw.active()
        weights = self.weights(self.draw)
        return {
            "step": self.step,
            "probs": _rounded(self.draw.probs),
            "active": active.tolist(),
            "counts": self.draw.counts[active].tolist(),
            "weights": _rounded(weights[active]),
            "rewards": _rounded(self.rewards),
            "grad": float(grad),
        }

    def log_record(self) -> Dict[str, Any]:
        """For metrics.jsonl: how many layers, and which share of the elements, this step touched."""
        if self.draw is None:
            return {}
        active = self.draw.active()
        return {"active_layers": int(active.numel()),
                "active_numel_frac": float(self.layer_numel[active].sum() / self.layer_numel.sum())}

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> Dict[str, Any]:
        draw = self.draw
        return {
            "rewards": self.rewards.clone(),
            "observed": self.observed,
            "generator": self.generator.get_state(),
            "draw": None if draw is None else {"step": draw.step, "probs": draw.probs.clone(),
                                               "counts": draw.counts.clone()},
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state["rewards"].numel() != self.rewards.numel():
            raise ValueError(f"adalezo state has {state['rewards'].numel()} layers, the model has {self.rewards.numel()}")
        self.rewards = state["rewards"].clone().to(torch.float64)
        self.observed = int(state["observed"])
        self.generator.set_state(state["generator"])
        d = state["draw"]
        self.draw = None if d is None else Draw(int(d["step"]), d["probs"].clone(), d["counts"].clone())


def _rounded(values: torch.Tensor) -> List[float]:
    """Six significant digits: enough for plots, and keeps a long run's log small."""
    return [float(f"{v:.6g}") for v in values.tolist()]


# ------------------------------------------------------------------ the log's figure

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
    from matplotlib.figure import Figure  # the report's plotting library, not needed to train

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
