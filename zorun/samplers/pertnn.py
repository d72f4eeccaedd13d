"""sampler=pertnn: ZO Fine-tuner's learned per-block perturbation scales (Zhang et al., ICML 2026).

One network per block b, Linear(5, 64) → Tanh → Linear(64, 1) → abs, maps

    x_t = [mean(θ_b), var(θ_b) (unbiased), L+_{t−1}, L−_{t−1}, σ_{t−1}]   (σ_0 = 1, L_{−1} = (0, 0))

to σ_t, the block's perturbation std. With the trace-preserving normalisation
(on by default) the Plan's scale is s_b = f·σ_b with

    f = sqrt(Σ_b d_b) / sqrt(Σ_b d_b σ_b²),   so   Σ_b d_b s_b² = Σ_b d_b:

the networks set the *shape* of the perturbation while E‖u‖² stays the
dimension, so the lr keeps its meaning. d_b is the block's numel, except for
embedding matrices, where only the rows of the batch's tokens receive
gradient: d_b = hidden × embed_tokens × batch_size (the reference's 15 tokens
per example). f carries no gradient. Every estimator honours the Plan's scale
(the kernels multiply z_b by s_b in the perturbation and the update), so this
sampler plugs into all of them; the networks are frozen here and trained by
``zorun-metatrain`` (:mod:`zorun.samplers.pertnn_meta`).

The networks (:class:`~zorun.samplers.pertnn_io.BlockNets`) are held stacked,
one (n, 64, 5) weight for n blocks, so a step costs one batched matmul, not n
module calls; :mod:`zorun.samplers.pertnn_io` stores them per block name.
See docs/methods.md and docs/pertnn.md.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Type

import torch

from zorun.errors import ConfigError, require
from zorun.estimators.base import Estimator, StepResult
from zorun.params import _EMBED_RE, ParamSpace
from zorun.plan import Plan
from zorun.ranges import at_least
from zorun.samplers import pertnn_io
from zorun.samplers.base import Sampler, SamplerConfig, register
from zorun.samplers.pertnn_io import BlockNets

log = logging.getLogger(__name__)

LOG_NAME = "pertnn.jsonl"
MOMENT_CHUNK = 1 << 24  # elements per chunk of the mean/variance pass (bounds the fp32 copy of 16-bit blocks)


def block_moments(tensor: torch.Tensor) -> torch.Tensor:
    """(mean, unbiased variance) of a tensor in float64 on its device, from fp32 chunks merged with Chan's formula.

    Chunks keep a 16-bit block's fp32 copy small, the merge avoids the
    cancellation of E[x²] − E[x]² for weights with a large mean, and nothing
    is read back to the host (no GPU sync per chunk).
    """
    flat = tensor.detach().reshape(-1)
    n_total = 0
    mean = m2 = torch.zeros((), dtype=torch.float64, device=flat.device)
    for start in range(0, flat.numel(), MOMENT_CHUNK):
        var, mu = torch.var_mean(flat[start : start + MOMENT_CHUNK].float(), correction=0)
        n = min(MOMENT_CHUNK, flat.numel() - start)
        total = n_total + n
        delta = mu.double() - mean
        mean = mean + delta * (n / total)
        m2 = m2 + var.double() * n + delta * delta * (n_total * n / total)
        n_total = total
    return torch.stack([mean, m2 / max(n_total - 1, 1)])


def is_embedding(name: str, tensor: torch.Tensor) -> bool:
    """Embedding matrices (token or position): only the rows of the batch's tokens get gradient."""
    return tensor.ndim == 2 and _EMBED_RE.search(name) is not None


def effective_sizes(space: ParamSpace, embed_tokens: int, batch_size: int) -> torch.Tensor:
    """d_b of the normalisation: numel, or hidden × embed_tokens × batch_size for embedding matrices."""
    return torch.tensor([b.tensor.shape[1] * embed_tokens * batch_size if is_embedding(b.name, b.tensor)
                         else b.numel for b in space.blocks], dtype=torch.float64)


def normalisation(sigma: torch.Tensor, sizes: torch.Tensor) -> float:
    """f = sqrt(Σ d_b) / sqrt(Σ d_b σ_b²): a plain float, so no gradient flows through it."""
    s = sigma.detach().to(torch.float64)
    return math.sqrt(float(sizes.sum()) / max(float((sizes * s * s).sum()), 1e-300))


@dataclass
class PertNNSamplerConfig(SamplerConfig):
    """sampler=pertnn: ZO Fine-tuner's learned per-block perturbation scales."""

    name: str = "pertnn"
    # trained networks (safetensors, see docs/pertnn.md); null: freshly initialised ones (meta-training only)
    checkpoint: Optional[str] = None
    rename: List[str] = field(default_factory=list)  # "REGEX=>REPLACEMENT" rules: model block name -> checkpoint name
    normalize: bool = True  # trace-preserving normalisation: sum_b d_b (f sigma_b)^2 = sum_b d_b
    # embedding matrices count as d_b = hidden x embed_tokens x batch_size (the reference's 15)
    embed_tokens: int = at_least(1, 15)
    batch_size: int = at_least(1, 8)  # the embedding rule's batch size (the YAML ties it to budget.batch_size)
    log_every: int = at_least(1, 10)  # steps between the per-block sigma records of pertnn.jsonl
    init_seed: int = 0  # seed of freshly initialised networks (checkpoint=null)


@register(PertNNSamplerConfig)
class PertNNSampler(Sampler):
    """Frozen per-block networks give each step's scales; meta-training lives in zorun-metatrain."""

    log_name = LOG_NAME

    @classmethod
    def check(cls, cfg) -> None:
        """The ranges, then the form of each rename rule."""
        super().check(cfg)
        for rule in cfg.rename:
            require("=>" in rule, "sampler.rename", rule, "each rule is 'REGEX=>REPLACEMENT'")

    @classmethod
    def refuse(cls, cfg, estimators: Mapping[str, Type[Estimator]]) -> None:
        """Training needs trained networks; fresh ones (checkpoint=null) are for zorun-metatrain only."""
        super().refuse(cfg, estimators)
        if not cfg.sampler.checkpoint:
            raise ConfigError("sampler=pertnn needs trained networks: sampler.checkpoint=PATH.safetensors "
                              "(from zorun-metatrain, or zorun-pertnn import of released ones)")

    def __init__(self, cfg, space: ParamSpace, seed: int):
        super().__init__(cfg, space, seed)
        n = len(space)
        if cfg.checkpoint:
            self.nets = pertnn_io.load_for_space(cfg.checkpoint, space, list(cfg.rename))
            log.info("pertnn: %d networks from %s", n, pertnn_io.locate(cfg.checkpoint))
        else:
            self.nets = BlockNets(n, generator=torch.Generator().manual_seed(int(cfg.init_seed)))
        self.nets.requires_grad_(False)
        self.normalize = bool(cfg.normalize)
        self.sizes = effective_sizes(space, int(cfg.embed_tokens), int(cfg.batch_size))
        self.log_every = int(cfg.log_every)
        self.losses = torch.zeros(2, dtype=torch.float64)  # L+_{t−1}, L−_{t−1}
        self.sigma = torch.ones(n)  # σ_{t−1}
        self.step = -1
        self.factor = 1.0

    # ------------------------------------------------------------- the maths
    def features(self, losses: torch.Tensor, sigma_prev: torch.Tensor) -> torch.Tensor:
        """x: (n, 5) float32 in FEATURES order, from θ now and the previous step's losses and σ."""
        moments = torch.stack([block_moments(b.tensor).cpu() for b in self.space.blocks])
        n = len(self.space)
        return torch.cat([moments, losses.to(torch.float64).expand(n, 2),
                          sigma_prev.detach().to(torch.float64).reshape(n, 1)], dim=1).float()

    def scales(self, sigma: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(s, f): the Plan's per-block scale s = f·σ (f = 1 without normalisation)."""
        f = normalisation(sigma, self.sizes) if self.normalize else 1.0
        return (sigma.detach().double() * f).float(), f

    # ------------------------------------------------------------- interface
    def plan(self, step: int) -> Plan:
        with torch.no_grad():
            sigma = self.nets(self.features(self.losses, self.sigma))
        scale, self.factor = self.scales(sigma)
        self.current, self.step = sigma, step
        return Plan(seed=self.step_seed(step), blocks=self.space.all_blocks(), scale=scale)

    def observe(self, plan: Plan, result: StepResult) -> None:
        """The next step's inputs: this step's L+ and L− (the last query's; L(θ) as L− one-sided) and σ."""
        self.losses = torch.tensor([result.extras["loss_plus"], result.extras["loss_minus"]], dtype=torch.float64)
        self.sigma = self.current
        if self.log is not None and self.step % self.log_every == 0:
            record: Dict[str, Any] = {"step": self.step, "factor": self.factor, "sigma": _rounded(self.current)}
            if self.step == 0:
                record["blocks"] = [b.name for b in self.space.blocks]
            self.log.write(record)

    def log_record(self) -> Dict[str, Any]:
        """For metrics.jsonl: the effective scales s_b = f·σ_b of the last step (min, mean over blocks, max), f."""
        if self.step < 0:
            return {}
        s = self.current.double() * self.factor
        return {"scale_min": float(s.min()), "scale_mean": float(s.mean()), "scale_max": float(s.max()),
                "norm_factor": self.factor}

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> Dict[str, Any]:
        """The recurrent inputs, and the networks themselves (a resume must not depend on the file staying put)."""
        return {"losses": self.losses.clone(), "sigma": self.sigma.clone(),
                "nets": {k: v.detach().clone() for k, v in self.nets.state_dict().items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state["sigma"].numel() != len(self.space):
            raise ValueError(f"pertnn state has {state['sigma'].numel()} blocks, the model has {len(self.space)}")
        self.losses = state["losses"].clone().to(torch.float64)
        self.sigma = state["sigma"].clone().float()
        self.nets.load_state_dict(state["nets"])


def _rounded(values: torch.Tensor) -> List[float]:
    """Six significant digits: enough for plots, and keeps a long run's log small."""
    return [float(f"{v:.6g}") for v in values.tolist()]
