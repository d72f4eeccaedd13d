"""The low-rank pass of estimator=lozo and lozo-m: θ ← keep·θ + alpha·A·Vᵀ for θ viewed as an m×n matrix.

LOZO's perturbation U·Vᵀ is a matmul of two thin Gaussian factors, not a
per-element Philox stream, so it has its own pass rather than a mode of the
fused z passes (:mod:`zorun.kernels.passes`), and it is the same torch code
whichever backend ``kernels=`` chose. θ is written in row chunks of about
CHUNK elements with ``addmm_``, so no m×n temporary is ever allocated; 16-bit
θ is computed in fp32 and rounded to nearest, or stochastically with the
rule of every other update pass (:func:`~zorun.kernels.reference.round_stochastic_`).
"""

from __future__ import annotations

from typing import Optional

import torch

from zorun.kernels.reference import CHUNK, round_stochastic_


@torch.no_grad()
def lowrank_update_(theta: torch.Tensor, a: torch.Tensor, v: torch.Tensor, keep: float = 1.0, alpha: float = 1.0,
                    rounding: Optional[torch.Generator] = None) -> None:
    """θ ← keep·θ + alpha·A·Vᵀ (A m×r, V n×r, fp32 arithmetic); 16-bit θ rounded to nearest, or stochastically
    with uniforms from `rounding`."""
    mat = theta.data.view(theta.shape[0], -1)
    rows = max(1, CHUNK // mat.shape[1])
    for start in range(0, mat.shape[0], rows):
        view = mat[start : start + rows]
        if view.dtype == torch.float32:
            view.addmm_(a[start : start + rows], v.t(), beta=keep, alpha=alpha)
            continue
        x = torch.addmm(view.float(), a[start : start + rows], v.t(), beta=keep, alpha=alpha)
        if rounding is None:
            view.copy_(x)
        else:
            round_stochastic_(view, x, torch.rand(x.shape, generator=rounding, device=x.device))
