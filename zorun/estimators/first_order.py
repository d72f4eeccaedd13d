"""The first-order baselines' shared step (fo-sgd, fo-adam): one forward, one backward, a torch.optim optimizer.

Not an option of its own: :mod:`zorun.estimators.fo_sgd` and
:mod:`zorun.estimators.fo_adam` subclass :class:`FirstOrder` with their
schema and optimizer.
"""

from __future__ import annotations

import math
from enum import Enum

import torch

from zorun.errors import ConfigError, ZorunError
from zorun.estimators.base import Estimator, StepResult, nbytes


class MixedPrecision(str, Enum):
    """estimator.mixed_precision of the first-order estimators."""

    none = "none"  # the passes in the weights' dtype
    float16 = "float16"  # autocast over fp32 weights with loss scaling: HF's --fp16, MeZO's FT rows
    bfloat16 = "bfloat16"  # autocast over fp32 weights (HF's --bf16)



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
