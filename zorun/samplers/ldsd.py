"""sampler=ldsd: directions from a learned Gaussian policy N(μ, σ²I), best of K, μ trained by REINFORCE.

LDSD (Parfenov et al., "Zero-Order Optimization for LLM Fine-Tuning via
Learnable Direction Sampling", 2026; docs/methods.md, docs/ldsd.md). Per step, with
d_i = μ + σ·ζ_i the K candidate directions (ζ_i ~ N(0, I) from seed s_i):

    f_i = L(θ + ε·d_i)                          one-sided, restored after each
    i*  = argmin f_i;  ĝ = (L(θ+εd*) − L(θ−εd*))/(2ε) · d*       d* = d_{i*}, not centred
    base update with ĝ (mezo, zo-sgd-momentum, zo-adam as AdaMM, zo-sign)
    b_i = f_i − mean_{j≠i} f_j                  leave-one-out baseline
    g_μ = (1/(Kσ²))·Σ_i b_i·(d_i − μ) = (1/(Kσ))·Σ_i b_i·ζ_i;   μ ← μ − η_μ·g_μ

The estimator runs the search and the probe (:meth:`ZOEstimator.search`):
this sampler hands it a Plan with K candidates, scale σ and its mean μ, which
the kernels fuse into every pass. The REINFORCE step regenerates every ζ_i
from its own seed s_i (one accumulate pass per candidate over μ). The public
code instead reseeds one generator once and draws the K regenerated
directions from it in sequence, so ζ_i no longer belongs to f_i and g_μ is
noise: μ random-walks (tests/test_ldsd.py shows both).

μ is one fp32 copy of the blocks that have a mean (``mean_fraction`` of the
blocks, a random subset fixed at the start; the rest sample with μ = 0), so
use it with LoRA or small models. Per-step log: <run dir>/ldsd.jsonl.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, Dict, List, Mapping, Optional, Type

import torch

from zorun import kernels
from zorun.errors import ConfigError
from zorun.estimators.base import Estimator, StepResult, copy_into, nbytes
from zorun.params import ParamSpace
from zorun.plan import Plan, mix_seed
from zorun.ranges import at_least, between, positive
from zorun.samplers.base import Sampler, SamplerConfig, register

LOG_NAME = "ldsd.jsonl"


class MeanInit(str, Enum):
    zero = "zero"  # μ_0 = 0: the first steps sample as the uniform sampler does
    random = "random"  # μ_0 = a random unit vector per block (the public code's alternative)


@dataclass
class LDSDSamplerConfig(SamplerConfig):
    """sampler=ldsd; defaults are the public script's."""

    name: str = "ldsd"
    # K candidate directions per step, best of K (K + 2 forward passes)
    k: int = at_least(2, 5, "the leave-one-out baseline needs two candidates")
    sigma: float = positive(1.0, "the policy's standard deviation")  # policy std: directions z ~ N(μ, σ²I)
    # η_μ: learning rate of the REINFORCE step on μ (0: best-of-K without learning)
    lr_mu: float = at_least(0, 4e-2, "0: best of K, no learned mean")
    mu_init: MeanInit = MeanInit.zero
    # share of the blocks that keep a learned mean (random fixed subset); others μ = 0
    mean_fraction: float = between(0, 1, 1.0, ": the share of blocks with a learned mean", lo_open=True)
    # log cos(μ, −∇L) every n steps, ∇L by autograd (a backward pass; small models); 0: never
    cosine_every: int = at_least(0, 0, "0: never")


def loo_baselines(losses: List[float]) -> List[float]:
    """b_i = f_i − mean_{j≠i} f_j."""
    k, total = len(losses), sum(losses)
    return [f - (total - f) / (k - 1) for f in losses]


@register(LDSDSamplerConfig)
class LDSDSampler(Sampler):
    log_name = LOG_NAME
    replays_state = True

    @classmethod
    def refuse(cls, cfg, estimators: Mapping[str, Type[Estimator]]) -> None:
        """LDSD's candidates and mean live in the kernels' directions, and its estimate is one two-sided probe."""
        super().refuse(cfg, estimators)
        est = cfg.estimator
        if not estimators[est.name].kernel_directions:
            usable = ", ".join(n for n, c in estimators.items() if c.kernel_directions)
            raise ConfigError(f"sampler=ldsd needs an estimator that probes along the kernels' Gaussian directions; "
                              f"estimator={est.name} does not, use one of {usable}")
        if est.one_sided:
            raise ConfigError("sampler=ldsd estimates two-sided along the best candidate; set estimator.one_sided=false")
        if est.q != 1:
            raise ConfigError(f"sampler=ldsd makes one estimate per step along the best of sampler.k candidates; "
                              f"set estimator.q=1 (got {est.q}), or raise sampler.k")

    def __init__(self, cfg, space: ParamSpace, seed: int):
        super().__init__(cfg, space, seed)
        self.k, self.sigma, self.lr_mu = int(cfg.k), float(cfg.sigma), float(cfg.lr_mu)
        self.cosine_every = int(cfg.cosine_every)
        n = len(space)
        # A stream of its own (mix_seed(seed, -2) is no step's seed): the subset and μ_0 are reproducible.
        gen = torch.Generator().manual_seed(mix_seed(seed, -2))
        count = max(1, math.ceil(float(cfg.mean_fraction) * n))
        chosen = range(n) if count == n else sorted(torch.randperm(n, generator=gen)[:count].tolist())
        self.mean: List[Optional[torch.Tensor]] = [None] * n
        for b in chosen:
            t = space.blocks[b].tensor
            mu = torch.zeros(t.shape, dtype=torch.float32)
            if str(getattr(cfg.mu_init, "value", cfg.mu_init)) == "random":
                mu = torch.randn(t.shape, generator=gen)
                mu /= mu.norm()
            self.mean[b] = mu.to(t.device)
        self.mean_blocks = torch.tensor(list(chosen), dtype=torch.long)
        self.scale = torch.full((n,), self.sigma, dtype=torch.float32)
        self.step = -1
        self.record: Dict[str, Any] = {}  # this step's candidate losses, choice, ‖μ‖, cosine

    # ------------------------------------------------------------- interface
    def plan(self, step: int) -> Plan:
        self.step = step
        self.record = {"step": step}
        return Plan(seed=self.step_seed(step), blocks=self.space.all_blocks(), scale=self.scale,
                    candidates=self.k, mean=self.mean)

    def complete(self, plan: Plan) -> Plan:
        return dataclasses.replace(plan, mean=self.mean)

    def learn(self, plan: Plan, result: StepResult) -> None:
        """μ ← μ − η_μ·g_μ from the step's candidate losses, each ζ_i regenerated from its own seed."""
        self.reinforce(plan.candidate_plans(), result.extras["candidate_losses"])

    def reinforce(self, directions: List[Plan], losses: List[float]) -> None:
        """μ_b += −η_μ·b_i/(Kσ)·ζ_{i,b} for each candidate i, ζ_i regenerated from directions[i]'s seed."""
        if self.lr_mu == 0.0:
            return
        k = len(losses)
        for d, b in zip(directions, loo_baselines(losses)):
            only_means = Plan(d.seed, self.mean_blocks, self.scale[self.mean_blocks])
            # accumulate_ adds coef·s·ζ = coef·σ·ζ
            kernels.accumulate_(self.space, only_means, -self.lr_mu * b / (k * self.sigma**2), self.mean)

    def observe(self, plan: Plan, result: StepResult) -> None:
        self.learn(plan, result)
        self.record.update(losses=[float(f) for f in result.extras["candidate_losses"]],
                           chosen=int(result.extras["chosen"]), mu_norm=self.mean_norm())
        if self.log is not None:
            self.log.write(self.record)

    def mean_norm(self) -> float:
        return math.sqrt(sum(float(m.double().square().sum()) for m in self.mean if m is not None))

    def wants_gradient(self, step: int) -> bool:
        """Every cosine_every-th step, counted as metrics.jsonl counts (steps done after it), so the two line up."""
        return self.cosine_every > 0 and (step + 1) % self.cosine_every == 0

    def observe_gradient(self, grads: List[torch.Tensor]) -> None:
        """cos(μ, −∇L) over the blocks with a mean (None while μ = 0)."""
        dot = norm_mu = norm_g = 0.0
        for mu, g in zip(self.mean, grads):
            if mu is None:
                continue
            g = g.double()
            dot -= float((mu.double() * g).sum())
            norm_mu += float(mu.double().square().sum())
            norm_g += float(g.square().sum())
        self.record["cos"] = dot / math.sqrt(norm_mu * norm_g) if norm_mu > 0 and norm_g > 0 else None

    def log_record(self) -> Dict[str, Any]:
        """For metrics.jsonl: this step's choice and ‖μ‖, and the cosine when it was measured."""
        return {k: self.record[k] for k in ("chosen", "mu_norm", "cos") if k in self.record}

    @property
    def state_bytes(self) -> int:
        return nbytes(self.mean)

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> Dict[str, Any]:
        return {"mean": [m for m in self.mean if m is not None], "mean_blocks": self.mean_blocks.clone()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if not torch.equal(torch.as_tensor(state["mean_blocks"]), self.mean_blocks):
            raise ValueError(f"ldsd state has a mean for blocks {state['mean_blocks'].tolist()}, "
                             f"this run for {self.mean_blocks.tolist()}")
        copy_into([m for m in self.mean if m is not None], state["mean"])
