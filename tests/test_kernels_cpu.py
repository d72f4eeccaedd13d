"""The numba CPU kernels against the Triton kernels, bit for bit, and the fallback where numba is missing.

Triton runs on the CPU only under its interpreter, and TRITON_INTERPRET=1
must be set before triton is first imported, so the Triton side runs this
file as a script in a fresh process (``python tests/test_kernels_cpu.py OUT``)
and saves every case's result; the test computes the same cases with numba
and compares the bits. The cases cover odd sizes, blocks of several tiles and
a partial last tile, scales and weights, every pass kind, a mean, and 16-bit
θ. bf16 rounded to nearest is compared against torch's own rounding instead:
the interpreter casts fp32 to bf16 by truncation (a GPU rounds to nearest).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from zorun import kernels
from zorun.errors import ZorunError
from zorun.params import ParamSpace
from zorun.plan import Plan

SHAPES = [(1,), (17,), (4097,), (3, 2731), (12289,)]  # 1 .. 4 tiles of 4096; the matrix decays
CASES = ["z", "plain", "mean", "momentum", "adam", "hizoo", "accumulate",
         "bf16-stochastic", "fp16-nearest", "fp16-stochastic"]


def space_of(dtype=torch.float32, seed=0) -> ParamSpace:
    gen = torch.Generator().manual_seed(seed)
    return ParamSpace([(f"model.layers.{i}.mlp.{'weight' if len(s) > 1 else 'bias'}",
                        torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype))) for i, s in enumerate(SHAPES)])


def fp32_states(space: ParamSpace, count: int, seed: int) -> List[List[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [[torch.rand(b.tensor.shape, generator=gen) + 0.5 for b in space.blocks] for _ in range(count)]


def plan_of(space: ParamSpace, seed: int, blocks=(0, 1, 2, 3, 4), mean=None) -> Plan:
    n = len(blocks)
    return Plan(seed, torch.tensor(blocks), torch.linspace(0.5, 2.0, n), torch.linspace(1.5, 0.25, n), mean=mean)


def run_case(case: str) -> List[torch.Tensor]:
    """The parameters and states after the case's pass, under the selected backend."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(case[:4], torch.float32)
    space = space_of(dtype)
    plan = plan_of(space, seed=(1 << 40) + CASES.index(case))
    states: List[List[torch.Tensor]] = []
    if case == "z":
        space = ParamSpace([(b.name, torch.nn.Parameter(torch.zeros_like(b.tensor))) for b in space.blocks])
        kernels.perturb_(space, Plan(plan.seed, plan.blocks), 1.0)
    elif case == "plain" or case.startswith(("bf16", "fp16")):
        kernels.update_(space, plan, restore=1e-3, coef=0.05, decay=0.1, stochastic=case.endswith("stochastic"))
    elif case == "mean":
        mean = [s if b in (0, 2, 3) else None for b, s in enumerate(fp32_states(space, 1, 5)[0])]
        kernels.update_(space, plan_of(space, plan.seed, mean=mean), restore=-1e-2, coef=0.3, decay=0.1)
    elif case == "momentum":
        states = fp32_states(space, 1, 6)
        kernels.update_momentum_(space, plan, 1e-3, 2.0, 0.05, 0.9, states[0], decay=0.1)
    elif case == "adam":
        states = fp32_states(space, 2, 7)
        kernels.update_adam_(space, plan, -1e-3, 3.0, 1e-2, states[0], states[1], torch.arange(5) + 1,
                             betas=(0.8, 0.95), eps=1e-6, decay=0.05)
    elif case == "hizoo":
        states = fp32_states(space, 1, 8)
        kernels.update_hizoo_(space, plan, restore=1e-3, coef=0.02, h=states[0], smooth=0.3, curvature=2.5, decay=0.1)
    elif case == "accumulate":
        states = fp32_states(space, 1, 9)
        kernels.accumulate_(space, plan_of(space, plan.seed, blocks=(0, 2, 4)), -0.7, states[0])
    return [b.tensor.detach().clone() for b in space.blocks] + [s for group in states for s in group]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({4: torch.int32, 2: torch.int16}[t.element_size()])


@pytest.fixture
def numba_backend():
    kernels.select("numba")
    yield
    kernels.select("auto")


def test_numba_equals_triton_bit_for_bit(tmp_path, numba_backend):
    out = tmp_path / "triton.pt"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, __file__, str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    triton: Dict[str, List[torch.Tensor]] = torch.load(out)
    assert sorted(triton) == sorted(CASES)
    for case in CASES:
        for i, (mine, theirs) in enumerate(zip(run_case(case), triton[case], strict=True)):
            differ = int((bits(mine) != bits(theirs)).sum())
            assert differ == 0, f"{case}, tensor {i}: {differ} of {mine.numel()} elements differ"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_nearest_is_the_fp32_pass_rounded_to_nearest_even(numba_backend, dtype):
    """A 16-bit pass computes in fp32 from the widened θ, then rounds as torch's .to(dtype) does."""
    narrow = space_of(dtype)
    wide = ParamSpace([(b.name, torch.nn.Parameter(b.tensor.detach().float())) for b in narrow.blocks])
    for space in (narrow, wide):
        kernels.update_(space, plan_of(space, seed=3), restore=1e-2, coef=0.5, decay=0.1)
    for a, b in zip(narrow.blocks, wide.blocks):
        assert torch.equal(bits(a.tensor.detach()), bits(b.tensor.detach().to(dtype)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_rounding_at_zero_the_subnormals_and_the_range_ends(numba_backend, dtype):
    """θ at 0, subnormals, the largest finite values and inf, moved by s·z for tiny to large s: the pass
    rounds as torch's .to(dtype) rounds the fp32 result (overflow to inf included)."""
    info = torch.finfo(dtype)
    edge = torch.tensor([0.0, -0.0, info.tiny, info.tiny / 4, -info.tiny / 3, info.smallest_normal / 1000, info.max,
                         -info.max, info.max / 2, 1.0, -3.5, info.eps, float("inf"), -float("inf")]).to(dtype)
    for scale in (1e-30, 1e-6, 1e-3, 1e4, 1e36):
        narrow = ParamSpace([("x.weight", torch.nn.Parameter(edge.repeat(100)))])
        wide = ParamSpace([("x.weight", torch.nn.Parameter(edge.repeat(100).float()))])
        for space in (narrow, wide):
            kernels.perturb_(space, Plan(1, torch.tensor([0]), torch.tensor([scale])), 1.0)
        want = wide.blocks[0].tensor.detach().to(dtype)
        assert torch.equal(bits(narrow.blocks[0].tensor.detach()), bits(want)), (dtype, scale)


def test_the_result_does_not_depend_on_the_thread_count(numba_backend):
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(run_case("adam"))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(bits(a), bits(b))


def test_z_chunks_give_the_z_the_pass_applied(numba_backend):
    space = ParamSpace([("x.weight", torch.nn.Parameter(torch.zeros(100_003)))])
    kernels.perturb_(space, Plan(11, torch.tensor([0])), 1.0)
    z = torch.cat([c.clone() for c, _ in kernels.z_chunks(space.blocks[0].tensor, 11, 0)])
    assert torch.equal(z, space.blocks[0].tensor.detach())


def test_without_numba_auto_falls_back_to_the_reference_with_the_reason(monkeypatch):
    from zorun.kernels import dispatch

    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` raises ImportError
    monkeypatch.delitem(sys.modules, "zorun.kernels.cpu", raising=False)
    monkeypatch.delattr(sys.modules["zorun.kernels"], "cpu", raising=False)
    monkeypatch.setattr(dispatch, "_cpu", None)
    monkeypatch.setattr(dispatch, "_cpu_error", None)
    space = space_of()
    try:
        line = kernels.select("auto", space)
        assert line.startswith("kernels=auto -> cpu: torch (numba unavailable: ModuleNotFoundError"), line
        before = space.blocks[2].tensor.detach().clone()
        kernels.perturb_(space, Plan(1, torch.tensor([2])), 1e-2)  # the reference runs the pass
        assert not torch.equal(space.blocks[2].tensor.detach(), before)
        with pytest.raises(ZorunError, match=r"^kernels=numba but numba does not import .*use kernels=torch$"):
            kernels.select("numba", space)
    finally:
        kernels.select("auto")


def test_numba_refuses_parameters_off_the_cpu_in_one_line():
    space = ParamSpace([("x.weight", torch.nn.Parameter(torch.zeros(3, device="meta")))])
    with pytest.raises(ZorunError, match=r"^kernels=numba needs CPU tensors .* on meta; use kernels=auto or kernels=triton$"):
        kernels.select("numba", space)
    assert kernels.current() == "auto"


if __name__ == "__main__":  # the Triton side of test_numba_equals_triton_bit_for_bit
    assert os.environ.get("TRITON_INTERPRET") == "1"
    kernels.select("triton")
    torch.save({case: run_case(case) for case in CASES}, sys.argv[1])


def test_a_numba_pass_leaves_torchs_thread_count_as_the_run_set_it():
    """numba's OpenMP pool, launched by the first pass, resets the process's OpenMP thread count, which torch
    shares: a run set to 1 thread ran its forwards on 2 and woke the pool every pass. Fresh process: the pool
    launches once per process."""
    code = ("import torch; torch.set_num_threads(1)\n"
            "from zorun import kernels\n"
            "from zorun.params import ParamSpace\n"
            "from zorun.plan import Plan\n"
            "space = ParamSpace([('w', torch.nn.Parameter(torch.zeros(200_000)))])\n"
            "kernels.select('numba', space)\n"
            "kernels.perturb_(space, Plan(1, torch.tensor([0])), 1e-3)\n"
            "print(torch.get_num_threads())\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "NUMBA_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "1"
