"""Which backend executes a pass: Triton for CUDA tensors when it imports, the torch reference otherwise.

The choice (``kernels=auto|triton|torch``) is made once at setup with
:func:`select`, which checks that it can work for the model's devices and
returns a line for the log. ``triton`` on CPU tensors is accepted only under
``TRITON_INTERPRET=1`` (the kernel tests); the variable must be set before
triton is first imported.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Dict, List, Optional, Tuple

import torch

from zorun.errors import ZorunError
from zorun.kernels import reference
from zorun.kernels.passes import Pass, StepArg, check_states, coefficients, means_of
from zorun.params import ParamSpace
from zorun.plan import Plan

BACKENDS = ("auto", "triton", "torch")
_choice = "auto"
_triton: Optional[ModuleType] = None
_triton_error: Optional[str] = None


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_module() -> Optional[ModuleType]:
    """zorun.kernels.triton_kernels, imported on first use (None, with the reason kept, if triton is missing)."""
    global _triton, _triton_error
    if _triton is None and _triton_error is None:
        try:
            from zorun.kernels import triton_kernels

            _triton = triton_kernels
        except ImportError as err:  # triton absent or built for another platform
            _triton_error = f"{type(err).__name__}: {err}"
    return _triton


def backend_for(device: torch.device) -> str:
    """'triton' or 'torch' for tensors on device, under the current choice."""
    if _choice == "torch":
        return "torch"
    if _choice == "triton":
        return "triton"
    return "triton" if device.type == "cuda" and triton_module() is not None else "torch"


def select(name: str = "auto", space: Optional[ParamSpace] = None) -> str:
    """Set the backend for every later pass; raise ZorunError if it cannot run on space's devices."""
    global _choice
    name = str(getattr(name, "value", name))
    if name not in BACKENDS:
        raise ZorunError(f"kernels={name} is unknown; choose kernels=auto, triton or torch")
    devices = sorted({b.tensor.device for b in space.blocks}, key=str) if space is not None else []
    if name == "triton":
        if triton_module() is None:
            raise ZorunError(f"kernels=triton but triton does not import ({_triton_error}); "
                             f"pip install triton, or use kernels=torch")
        cpu = [d for d in devices if d.type != "cuda"]
        if cpu and not interpreted():
            raise ZorunError(f"kernels=triton needs CUDA tensors but the model has parameters on {cpu[0]}; "
                             f"use kernels=auto or kernels=torch")
    _choice = name
    if not devices:
        return f"kernels={name}"
    used = ", ".join(f"{d}: {backend_for(d)}" for d in devices)
    note = f" (triton unavailable: {_triton_error})" if name == "auto" and _triton_error else ""
    return f"kernels={name} -> {used}{note}"


def current() -> str:
    return _choice


def run(space: ParamSpace, plan: Plan, restore: float, coef: float, decay: float,
        p: Pass = Pass(), step: StepArg = 1) -> None:
    """Compute the per-block coefficients once, then hand each backend its active blocks."""
    if len(plan.blocks) == 0:
        return
    check_states(space, plan, p)
    coefs = coefficients(space, plan, restore, coef, decay, p, step)
    mean = means_of(plan, p)
    groups: Dict[str, Tuple[List[int], List[List[float]]]] = {}
    for b, row in zip(plan.blocks.tolist(), coefs):
        blocks, rows = groups.setdefault(backend_for(space.blocks[b].tensor.device), ([], []))
        blocks.append(b)
        rows.append(row)
    for backend, (blocks, rows) in groups.items():
        module = reference if backend == "torch" else triton_module()
        module.run_pass(space, plan.seed, blocks, rows, p, mean)
