"""One PertNN meta-step: the one-step-ahead meta-loss and its gradient with no copy of the model.

At θ (a point of the first-order teacher's trajectory), on one batch:

    σ = PertNN(x)  (with gradient);  s_b = f·σ_b  (f from the normalisation, no gradient)
    L± = L(θ ± ε·s·z)  (no gradient);  c = (L+ − L−)/(2ε)
    θ' = θ − η_meta·c·s·z;   meta-loss = L(θ') on the same batch

Since ∂θ'_b/∂σ_b = −η_meta·c·f·z_b, one backward pass at θ' gives every
block's

    ∂meta/∂σ_b = −η_meta·c·f·⟨∇_b L(θ'), z_b⟩,

and σ.backward(those) carries it into the networks. θ is moved to θ' in
place by the kernels (one fused pass that also undoes the −ε probe), z_b is
regenerated chunk by chunk for the dot products, and θ is moved back by the
same pass with the opposite sign, so the memory is one model, its gradient
and the activations of one backward: what first-order training needs anyway.
Moving back is exact up to float rounding, like MeZO's own restore.

The dot products regenerate z on the CPU as the selected backend draws it
(:func:`zorun.kernels.z_chunks`: the torch reference's generator, or the
numba kernels' Philox stream), so meta-training runs on either CPU backend;
Triton's GPU z is not regenerated here (the networks do not depend on which
generator drew z).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from zorun import kernels
from zorun.errors import ZorunError
from zorun.kernels.dispatch import backend_for
from zorun.params import ParamSpace
from zorun.plan import Plan
from zorun.samplers.pertnn import PertNNSampler


@dataclass
class History:
    """The recurrent inputs of one task's stream: L± of its previous step and its previous σ."""

    losses: torch.Tensor
    sigma: torch.Tensor

    @classmethod
    def start(cls, n: int) -> "History":
        return cls(torch.zeros(2, dtype=torch.float64), torch.ones(n))


@dataclass
class MetaStep:
    meta_loss: float  # L(θ')
    loss_plus: float
    loss_minus: float
    sigma: torch.Tensor  # this step's σ (detached)
    factor: float  # f


def z_dots(space: ParamSpace, seed: int) -> torch.Tensor:
    """⟨∇_b L, z_b⟩ for every block, z_b regenerated from (seed, b) as the selected kernels draw it."""
    out = torch.zeros(len(space), dtype=torch.float64)
    for block in space.blocks:
        grad = block.tensor.grad
        if grad is None:  # the block does not reach the loss
            continue
        flat = grad.reshape(-1)
        total = 0.0
        for z, start in kernels.z_chunks(block.tensor, seed, block.id):
            total += float(torch.dot(flat[start : start + z.numel()].float(), z))
        out[block.id] = total
    return out


class MetaLearner:
    """Trains a PertNNSampler's networks with SGD on the one-step-ahead meta-loss."""

    def __init__(self, sampler: PertNNSampler, eps: float, eta: float, lr: float):
        self.sampler, self.space = sampler, sampler.space
        self.eps, self.eta = float(eps), float(eta)
        sampler.nets.requires_grad_(True)
        self.optimizer = torch.optim.SGD(sampler.nets.parameters(), lr=float(lr))

    def check_backend(self) -> None:
        devices = {b.tensor.device for b in self.space.blocks}
        if any(backend_for(d) == "triton" for d in devices):
            raise ZorunError("meta-training regenerates z on the CPU for its meta-gradient; "
                             "run it with kernels=auto, numba or torch on CPU")

    def meta_gradient(self, seed: int, history: History, loss: Callable[[], float],
                      loss_grad: Callable[[], torch.Tensor]) -> MetaStep:
        """Leave ∂meta/∂ω in the networks' .grad (zeroed first) and θ where it was; update `history`."""
        self.check_backend()
        s, eps, eta = self.sampler, self.eps, self.eta
        self.optimizer.zero_grad(set_to_none=True)
        sigma = s.nets(s.features(history.losses, history.sigma))
        scale, f = s.scales(sigma)
        plan = Plan(seed=seed, blocks=self.space.all_blocks(), scale=scale)
        kernels.perturb_(self.space, plan, eps)
        lp = loss()
        kernels.perturb_(self.space, plan, -2 * eps)
        lm = loss()
        c = (lp - lm) / (2 * eps)
        kernels.update_(self.space, plan, restore=eps, coef=eta * c)  # θ' = θ − η·c·s·z (−ε probe undone)
        try:
            for block in self.space.blocks:
                block.tensor.grad = None
            meta = loss_grad()
            meta.backward()
            dots = z_dots(self.space, seed)
        finally:
            kernels.update_(self.space, plan, restore=0.0, coef=-eta * c)  # back to θ
            for block in self.space.blocks:
                block.tensor.grad = None
        sigma.backward((-eta * c * f * dots).to(sigma.dtype))
        history.losses = torch.tensor([lp, lm], dtype=torch.float64)
        history.sigma = sigma.detach()
        return MetaStep(float(meta.detach()), lp, lm, sigma.detach(), f)

    def step(self, seed: int, history: History, loss, loss_grad) -> MetaStep:
        result = self.meta_gradient(seed, history, loss, loss_grad)
        self.optimizer.step()
        return result
