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

The first-order baselines (fo-sgd, fo-adam) share :class:`FirstOrder`: one
forward and one backward per step, then their torch.optim optimizer.
Each ``estimators/<option>.py`` (lozo-m: in lozo.py, LOZO with momentum)
holds its schema (a dataclass derived from :class:`EstimatorConfig`), its
range checks (``check``), the options it refuses (``refuse``) and its class,
and adds itself to :data:`ESTIMATORS` with :func:`register`; importing
:mod:`zorun.estimators` imports them all.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Dict, Optional, Type

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from zorun import kernels
from zorun.errors import ConfigError, ZorunError, require
from zorun.estimators.schedule import LRScheduleKind
from zorun.params import ParamSpace
from zorun.plan import Plan
from zorun.timing import Clock

log = logging.getLogger(__name__)


@dataclass
class EstimatorConfig:
    """Fields every estimator has; each estimator's schema adds its own (``/schema/estimator/<option>``)."""

    name: str = "mezo"
    lr: float = 1e-3
    weight_decay: float = 0.0  # decoupled, θ ← (1 − lr·λ)θ; never on biases or norm weights
    schedule: LRScheduleKind = LRScheduleKind.constant
    warmup_steps: int = 0  # linear warm-up from 0 (Hugging Face convention)
    min_lr_ratio: float = 0.0  # linear/cosine: the lr at the last step, as a fraction of lr


@dataclass
class ZOEstimatorConfig(EstimatorConfig):
    """estimator=mezo and zo-sign; the base of every zeroth-order estimator."""

    eps: float = 1e-3
    one_sided: bool = False  # (L(θ+εz) − L(θ))/ε instead of the central difference
    q: int = 1  # queries per step, averaged, applied sequentially
    stochastic_rounding: bool = True  # update passes round 16-bit θ unbiasedly, so updates below half an ulp count


class MixedPrecision(str, Enum):
    """estimator.mixed_precision of the first-order estimators."""

    none = "none"  # the passes in the weights' dtype
    float16 = "float16"  # autocast over fp32 weights with loss scaling: HF's --fp16, MeZO's FT rows
    bfloat16 = "bfloat16"  # autocast over fp32 weights (HF's --bf16)


ConfigStore.instance().store(group="schema/estimator", name="base", node=EstimatorConfig)

ESTIMATORS: Dict[str, Type["Estimator"]] = {}  # option name -> class


def register(schema: type) -> Callable[[Type["Estimator"]], Type["Estimator"]]:
    """Class decorator: estimator=<cls.name> builds cls, and its YAML composes onto ``/schema/estimator/<cls.name>``."""

    def add(cls: Type[Estimator]) -> Type[Estimator]:
        ESTIMATORS[cls.name] = cls
        ConfigStore.instance().store(group="schema/estimator", name=cls.name, node=schema)
        return cls

    return add


def require_fraction(cfg: DictConfig, *keys: str) -> None:
    """Each key in [0, 1): a momentum or an Adam beta."""
    for key in keys:
        require(0 <= cfg[key] < 1, f"estimator.{key}", cfg[key], "it must be in [0, 1)")


def require_positive(cfg: DictConfig, key: str) -> None:
    require(cfg[key] > 0, f"estimator.{key}", cfg[key], "it must be > 0")


def check_adam(cfg: DictConfig) -> None:
    """The ranges of Adam's beta1, beta2 and adam_eps (zo-adam and fo-adam)."""
    require_fraction(cfg, "beta1", "beta2")
    require_positive(cfg, "adam_eps")


def check_probe(cfg: DictConfig) -> None:
    """The ranges of ZOEstimatorConfig's probe fields (every ZO estimator, HiZOO's own step included)."""
    require_positive(cfg, "eps")
    require(cfg.q >= 1, "estimator.q", cfg.q, "it must be >= 1")


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
        """Range checks of the `estimator` node that types cannot express (before any model loads)."""
        require_positive(cfg, "lr")
        require(cfg.weight_decay >= 0, "estimator.weight_decay", cfg.weight_decay, "it must be >= 0")
        require(cfg.warmup_steps >= 0, "estimator.warmup_steps", cfg.warmup_steps, "it must be >= 0")
        require(0 <= cfg.min_lr_ratio <= 1, "estimator.min_lr_ratio", cfg.min_lr_ratio, "it must be in [0, 1]")

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

    max_queries: Optional[int] = None  # None: any q; 1: the update needs the whole averaged estimate at once
    q_reason = ""
    kernel_directions = True

    @classmethod
    def check(cls, cfg: DictConfig) -> None:
        super().check(cfg)
        check_probe(cfg)

    @classmethod
    def refuse(cls, cfg: DictConfig) -> None:
        if cls.max_queries is not None and cfg.q > cls.max_queries:
            raise ConfigError(f"estimator={cls.name} supports estimator.q=1 only ({cls.q_reason}); got q={cfg.q}")

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


class FirstOrder(Estimator):
    """Backpropagation baselines with torch.optim: the memory upper bound of the ZO papers' tables (MeZO's
    "FT" rows) and the teacher trajectory of PertNN meta-training.

    The run hands them a differentiable loss (one forward with autograd
    history); each step is one forward and one backward pass, then the
    subclass's optimizer (:meth:`make_optimizer`). Weight decay goes to the
    parameter group of decayed tensors only (never biases or norm weights).
    ``max_grad_norm`` > 0 clips the global gradient norm first
    (torch.nn.utils.clip_grad_norm_; the reported grad is the norm before
    clipping). Gradients are freed after each step; ``state_bytes`` is the
    optimizer's state (momentum buffer, Adam moments), while gradients and
    activations show in ``peak_mem_bytes``. They ignore the sampler's Plan, so
    the registry pairs them with sampler=uniform only.

    ``mixed_precision`` (float16 | bfloat16) runs the forward and backward under
    torch.autocast over fp32 weights, as the HF Trainer's ``--fp16`` that MeZO's
    FT rows use; float16 scales the loss with torch's GradScaler (initial scale
    2^16, halved on overflow), and a step whose scaled gradient overflows leaves
    θ untouched and lowers the scale, as there: it is a step of the budget, not
    a non-finite loss.
    """

    passes_per_step = 1
    differentiable = True

    def __init__(self, cfg, space):
        super().__init__(cfg, space)
        decayed = [b.tensor for b in space.blocks if b.decay]
        rest = [b.tensor for b in space.blocks if not b.decay]
        groups = [{"params": ps, "weight_decay": wd}
                  for ps, wd in ((decayed, float(cfg.weight_decay)), (rest, 0.0)) if ps]
        self.params = [b.tensor for b in space.blocks]
        self.max_grad_norm = float(cfg.get("max_grad_norm", 0.0))  # HF Trainer's clip; 0: none
        self.optimizer = self.make_optimizer(groups)
        amp = str(getattr(cfg.mixed_precision, "value", cfg.mixed_precision))
        self.amp_dtype = None if amp == "none" else getattr(torch, amp)
        if self.amp_dtype is not None and any(p.dtype != torch.float32 for p in self.params):
            raise ZorunError(f"estimator.mixed_precision={amp} keeps float32 weights and autocasts the passes; "
                             f"set model.dtype=float32")
        device = self.params[0].device.type if self.params else "cpu"
        self.scaler = torch.amp.GradScaler(device) if self.amp_dtype == torch.float16 else None

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        require(cfg.max_grad_norm >= 0, "estimator.max_grad_norm", cfg.max_grad_norm, "it must be >= 0 (0: no clip)")

    @classmethod
    def refuse(cls, cfg) -> None:
        if str(getattr(cfg.mixed_precision, "value", cfg.mixed_precision)) == "float16" and \
                not hasattr(torch.amp, "GradScaler"):
            raise ConfigError("estimator.mixed_precision=float16 scales the loss with torch.amp.GradScaler "
                              "(torch >= 2.3); upgrade torch or use bfloat16")

    def autocast(self):
        device = self.params[0].device.type if self.params else "cpu"
        return torch.autocast(device, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def make_optimizer(self, groups) -> torch.optim.Optimizer:
        raise NotImplementedError

    @property
    def state_bytes(self) -> int:
        return nbytes(t for st in self.optimizer.state.values() for t in st.values() if torch.is_tensor(t))

    def step(self, plan, loss, lr, clock) -> StepResult:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        with clock("forward"):  # forward and backward
            with self.autocast():
                value = loss()
            finite = bool(torch.isfinite(value))
            if finite:
                (self.scaler.scale(value) if self.scaler else value).backward()
        if not finite:
            return StepResult(float(value.detach()), float("nan"), 1, finite=False)
        with clock("update"):
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            norms = [torch.linalg.vector_norm(p.grad) for p in self.params if p.grad is not None]
            norm = float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
            if math.isfinite(norm) and self.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
            if self.scaler:  # skips the update itself on overflow, then adjusts the scale
                self.scaler.step(self.optimizer)
                self.scaler.update()
            elif math.isfinite(norm):
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)  # gradients are not state between steps
        if not math.isfinite(norm) and not self.scaler:  # parameters untouched
            return StepResult(float(value.detach()), norm, 1, finite=False, backward_passes=1)
        self.steps += 1
        return StepResult(float(value.detach()), norm, 1, backward_passes=1,
                          extras={"scale_overflow": True} if not math.isfinite(norm) else {})

    def state_dict(self):
        """torch.optim's state, keyed by parameter index as str (checkpoints keep string keys)."""
        opt = self.optimizer.state_dict()
        opt["state"] = {str(k): v for k, v in opt["state"].items()}
        state = {**super().state_dict(), "optimizer": opt}
        if self.scaler:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        opt = dict(state["optimizer"])
        opt["state"] = {int(k): v for k, v in opt["state"].items()}
        self.optimizer.load_state_dict(opt)
        if self.scaler:
            self.scaler.load_state_dict(state["scaler"])
