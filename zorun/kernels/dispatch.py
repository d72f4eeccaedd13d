"""Which backend executes a pass: Triton for CUDA tensors, numba for CPU tensors, the torch reference where
either does not import.

The choice (``kernels=auto|triton|numba|torch``) is made once at setup with
:func:`select`, which checks that it can work for the model's devices and
returns a line for the log (with the reason when auto falls back to torch).
``triton`` on CPU tensors is accepted only under ``TRITON_INTERPRET=1`` (the
kernel tests); the variable must be set before triton is first imported.
Triton and numba draw the same z (:mod:`zorun.kernels.stream`); the torch
reference draws its own.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from zorun.errors import ZorunError
from zorun.kernels import reference
from zorun.kernels.passes import Pass, StepArg, check_states, coefficients, means_of
from zorun.params import ParamSpace
from zorun.plan import Plan

BACKENDS = ("auto", "triton", "numba", "torch")
_choice = "auto"
_triton: Optional[ModuleType] = None
_triton_error: Optional[str] = None
_cpu: Optional[ModuleType] = None
_cpu_error: Optional[str] = None


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


def cpu_module() -> Optional[ModuleType]:
    """zorun.kernels.cpu, imported on first use (None, with the reason kept, if numba is missing)."""
    global _cpu, _cpu_error
    if _cpu is None and _cpu_error is None:
        try:
            from zorun.kernels import cpu

            _cpu = cpu
        except ImportError as err:  # numba absent, or built for another numpy
            _cpu_error = f"{type(err).__name__}: {err}"
    return _cpu


def backend_for(device: torch.device) -> str:
    """'triton', 'numba' or 'torch' for tensors on device, under the current choice."""
    if _choice != "auto":
        return _choice
    if device.type == "cuda":
        return "triton" if triton_module() is not None else "torch"
    return "numba" if device.type == "cpu" and cpu_module() is not None else "torch"


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
    if name == "numba":
        if cpu_module() is None:
            raise ZorunError(f"kernels=numba but numba does not import ({_cpu_error}); "
                             f"pip install numba, or use kernels=torch")
        other = [d for d in devices if d.type != "cpu"]
        if other:
            raise ZorunError(f"kernels=numba needs CPU tensors but the model has parameters on {other[0]}; "
                             f"use kernels=auto or kernels=triton")
    _choice = name
    if not devices:
        return f"kernels={name}"
    used = ", ".join(f"{d}: {backend_for(d)}" for d in devices)
    notes = [f"{what} unavailable: {error}" for what, error, kind in
             (("triton", _triton_error, "cuda"), ("numba", _cpu_error, "cpu"))
             if name == "auto" and error and any(d.type == kind for d in devices)]
    return f"kernels={name} -> {used}" + "".join(f" ({n})" for n in notes)


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
        _module(backend).run_pass(space, plan.seed, blocks, rows, p, mean)


def _module(backend: str) -> ModuleType:
    return {"torch": reference, "triton": triton_module(), "numba": cpu_module()}[backend]


def z_chunks(param: torch.Tensor, seed: int, block: int) -> Iterator[Tuple[torch.Tensor, int]]:
    """Yield (fp32 z chunk, its start in the flat param) of block's z as the passes on param's device draw it.

    Triton's z is the Philox stream, regenerated here on the CPU (numba) and moved to the device.
    """
    if backend_for(param.device) == "torch":
        return reference.z_chunks(param, seed, block)
    if cpu_module() is None:
        raise ZorunError(f"regenerating the Philox z on the CPU needs numba ({_cpu_error}); use kernels=torch")
    return cpu_module().z_chunks(param, seed, block)
