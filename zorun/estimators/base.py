"""The estimator interface, and the SPSA probing loop shared by the zeroth-order family.

An estimator spends a step's forward passes on the sampler's Plan and
writes the update. ZO estimators differ only in how one probe (a projected
gradient g along the query's direction) becomes an update, so the probing
loop lives here once: per query j with the Plan's seed for j,

    two-sided:  θ += εz; L+ = L(θ); θ −= 2εz; L− = L(θ); g_j = (L+ − L−)/(2ε)
    one-sided:  L0 = L(θ) once per step; θ += εz; L+ = L(θ); g_j = (L+ − L0)/ε

and the subclass's :meth:`ZOEstimator.apply` undoes the perturbation
(restore = +ε, or −ε one-sided) fused with its share of the update.
A Plan with K candidates (sampler=ldsd) is first searched: per candidate i,
θ += εd_i; f_i = L(θ); θ −= εd_i; then the two-sided probe above runs along
the best one, d_{i*} with i* = argmin f_i (K + 2 forward passes). The logged
losses hold the f_i, so a replay picks the same candidate.
No estimator keeps an RNG: every random draw is keyed by the Plan's seed,
so a state_dict plus the sampler's state reproduces a run exactly.
``estimator.stochastic_rounding`` (default true) makes every update pass
round 16-bit parameters stochastically, so an update below half an ulp still
moves them on average; perturbations and restores round to nearest.

The first-order baselines (fo-sgd, fo-adam) share
:class:`zorun.estimators.first_order.FirstOrder`.
Each ``estimators/<option>.py`` (lozo-m: in lozo.py, LOZO with momentum)
holds its schema (a dataclass derived from :class:`EstimatorConfig`, whose
``name`` default is the option's name and whose fields declare their ranges
with :mod:`zorun.ranges`), the options it refuses (``refuse``) and its class,
and adds itself to :data:`ESTIMATORS` with :func:`register`; importing
:mod:`zorun.estimators` imports them all.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Type

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from zorun import kernels
from zorun.errors import ConfigError
from zorun.estimators.schedule import LRScheduleKind
from zorun.params import ParamSpace
from zorun.plan import Plan
from zorun.ranges import at_least, between, check_ranges, fraction, positive
from zorun.timing import Clock

log = logging.getLogger(__name__)


@dataclass
class EstimatorConfig:
    """Fields every estimator has; each estimator's schema adds its own (``/schema/estimator/<option>``)."""

    name: str = "mezo"
    lr: float = positive(1e-3)
    weight_decay: float = at_least(0, 0.0)  # decoupled, θ ← (1 − lr·λ)θ; never on biases or norm weights
    schedule: LRScheduleKind = LRScheduleKind.constant
    warmup_steps: int = at_least(0, 0)  # linear warm-up from 0 (Hugging Face convention)
    min_lr_ratio: float = between(0, 1, 0.0)  # linear/cosine: the lr at the last step, as a fraction of lr


@dataclass
class ZOEstimatorConfig(EstimatorConfig):
    """estimator=mezo and zo-sign; the base of every zeroth-order estimator."""

    eps: float = positive(1e-3)
    one_sided: bool = False  # (L(θ+εz) − L(θ))/ε instead of the central difference
    q: int = at_least(1, 1)  # queries per step, averaged, applied sequentially
    stochastic_rounding: bool = True  # update passes round 16-bit θ unbiasedly, so updates below half an ulp count


@dataclass
class AdamOptions:
    """Adam's fields and ranges, written once for zo-adam's and fo-adam's schemas.

    A schema lists it before its base (``class ZOAdamConfig(AdamOptions, ZOEstimatorConfig)``): dataclass fields
    follow the reverse MRO, so these come after the base's, as in ``--cfg job`` and saved configs."""

    beta1: float = fraction(0.9)
    beta2: float = fraction(0.999)
    adam_eps: float = positive(1e-8)


ConfigStore.instance().store(group="schema/estimator", name="base", node=EstimatorConfig)

ESTIMATORS: Dict[str, Type["Estimator"]] = {}  # option name -> class


def register(schema: type) -> Callable[[Type["Estimator"]], Type["Estimator"]]:
    """Class decorator: estimator=<schema's name default> builds cls, whose check reads schema's ranges, and its
    YAML composes onto ``/schema/estimator/<name>``: the option is named once, in its schema."""

    def add(cls: Type[Estimator]) -> Type[Estimator]:
        cls.name, cls.schema = schema.name, schema
        ESTIMATORS[cls.name] = cls
        ConfigStore.instance().store(group="schema/estimator", name=cls.name, node=schema)
        return cls

    return add


@dataclass
class StepResult:
    loss: float  # the step's training loss estimate (mean of the probes)
    grad: float  # projected gradient g (mean over queries); gradient norm for first-order estimators
    forward_passes: int
    finite: bool = True
    extras: Dict[str, Any] = field(default_factory=dict)  # e.g. per-query losses
    backward_passes: int = 0  # first-order estimators: one backward per step


LossFn = Callable[[], Any]  # one forward on the step's batch: a float (no grad), or a tensor (differentiable)


class Estimator:
    name = "base"
    schema: type = EstimatorConfig  # register() sets the option's own
    passes_per_step = 2
    differentiable = False  # True: the run hands step() a loss that returns a tensor with autograd history
    kernel_directions = False  # True: probes along the kernels' Plan directions (mean, candidates included)

    def __init__(self, cfg: DictConfig, space: ParamSpace):
        self.cfg = cfg
        self.space = space
        self.steps = 0  # completed steps
        # the ZO estimators' update passes: unbiased rounding of 16-bit θ (first-order ones have no such key)
        self.stochastic = bool(cfg.get("stochastic_rounding", False))
        sixteen = sum(b.tensor.dtype in (torch.float16, torch.bfloat16) for b in space.blocks)
        if "stochastic_rounding" in cfg and sixteen:
            log.info("estimator.stochastic_rounding=%s: updates round the %d 16-bit parameter tensors %s",
                     str(self.stochastic).lower(), sixteen, "stochastically" if self.stochastic else "to nearest")

    @classmethod
    def check(cls, cfg: DictConfig) -> None:
        """Range checks of the `estimator` node that types cannot express (before any model loads): the ranges
        its schema's fields declare."""
        check_ranges(cls.schema, cfg, "estimator")

    @classmethod
    def refuse(cls, cfg: DictConfig) -> None:
        """Refuse options this estimator cannot honour together (ConfigError, one line), before the model loads.

        Apart from the range checks: a multirun with skip_incompatible records such a job instead of failing."""

    @property
    def state_bytes(self) -> int:
        """Extra memory the estimator keeps beyond the model (momentum, moments, ...)."""
        return 0

    def step(self, plan: Plan, loss: LossFn, lr: float, clock: Clock) -> StepResult:
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.steps = int(state["steps"])


def fp32_like(space: ParamSpace, fill: float = 0.0):
    """One fp32 tensor per block, θ's shape and device: the state layout the kernels expect."""
    return [torch.full_like(b.tensor, fill, dtype=torch.float32, memory_format=torch.contiguous_format)
            for b in space.blocks]


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def copy_into(dst, src) -> None:
    """Load saved state tensors into the live ones (shapes checked by copy_)."""
    if len(dst) != len(src):
        raise ValueError(f"state has {len(src)} tensors, the estimator {len(dst)}")
    with torch.no_grad():
        for d, s in zip(dst, src):
            d.copy_(s)


class ZOEstimator(Estimator):
    """SPSA probing with q queries and one- or two-sided differences; subclasses define apply()."""

    # why the update takes estimator.q=1 only (it needs the whole averaged estimate at once); "": any q
    one_query = ""
    kernel_directions = True

    @classmethod
    def refuse(cls, cfg: DictConfig) -> None:
        if cls.one_query and cfg.q > 1:
            raise ConfigError(f"estimator={cls.name} supports estimator.q=1 only ({cls.one_query}); got q={cfg.q}")

    @property
    def passes_per_step(self) -> int:  # type: ignore[override]
        q = self.cfg.q
        return q + 1 if self.cfg.one_sided else 2 * q

    def decay(self, lr: float) -> float:
        return lr * self.cfg.weight_decay

    # -- hooks a subclass may replace (LOZO's low-rank directions)
    def begin(self, plan: Plan) -> None:
        """Called once per step before probing."""

    def perturb(self, plan: Plan, alpha: float) -> None:
        kernels.perturb_(self.space, plan, alpha)

    def restore(self, plan: Plan, restore: float) -> None:
        """Undo a perturbation without updating (non-finite losses)."""
        kernels.update_(self.space, plan, restore=restore, coef=0.0)

    def apply(self, plan: Plan, query: int, restore: float, g: float, lr: float) -> None:
        """θ += restore·(direction) fused with query `query`'s share of the update for projected gradient g."""
        raise NotImplementedError

    def search(self, plan: Plan, loss: LossFn, clock: Clock):
        """One-sided losses f_i of the Plan's K candidates, each restored at once; (f, i*) with i* = argmin f."""
        eps, found = self.cfg.eps, []
        for candidate in plan.candidate_plans():
            with clock("perturb"):
                self.perturb(candidate, eps)
            with clock("forward"):
                found.append(loss())
            with clock("perturb"):
                self.restore(candidate, -eps)
            if not math.isfinite(found[-1]):
                break
        return found, min(range(len(found)), key=found.__getitem__)

    def step(self, plan: Plan, loss: LossFn, lr: float, clock: Clock) -> StepResult:
        eps, q, one_sided = self.cfg.eps, self.cfg.q, self.cfg.one_sided
        passes, grads, losses = 0, [], []
        searched: Dict[str, Any] = {}
        if plan.candidates:
            found, best = self.search(plan, loss, clock)
            passes += len(found)
            if not all(math.isfinite(f) for f in found):
                return StepResult(float("nan"), float("nan"), passes, finite=False)
            plan = plan.candidate(best)
            searched = {"candidate_losses": found, "chosen": best}
        self.begin(plan)
        base = lp = lm = float("nan")
        if one_sided:
            with clock("forward"):
                base = loss()
            passes += 1
            if not math.isfinite(base):
                return StepResult(base, float("nan"), passes, finite=False)
        for j in range(q):
            pj = plan.for_query(j)
            with clock("perturb"):
                self.perturb(pj, eps)
            with clock("forward"):
                lp = loss()
            passes += 1
            if one_sided:
                lm, restore, g = base, -eps, (lp - base) / eps
            else:
                with clock("perturb"):
                    self.perturb(pj, -2 * eps)
                with clock("forward"):
                    lm = loss()
                passes += 1
                restore, g = eps, (lp - lm) / (2 * eps)
            if not (math.isfinite(lp) and math.isfinite(lm)):
                with clock("update"):
                    self.restore(pj, restore)
                return StepResult(float("nan"), float("nan"), passes, finite=False)
            with clock("update"):
                self.apply(pj, j, restore, g, lr)
            grads.append(g)
            losses.append(base if one_sided else (lp + lm) / 2)
        self.steps += 1
        return StepResult(sum(losses) / q, sum(grads) / q, passes,
                          extras={"loss_plus": lp, "loss_minus": lm, "grads": grads, **searched})
