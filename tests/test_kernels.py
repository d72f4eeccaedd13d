"""Kernel passes checked against plain torch formulas, for every backend.

Every check is parametrised by backend. In the normal pytest process the
backends are the torch reference and the numba CPU kernels; Triton's kernels
run on CPU only under its interpreter, and TRITON_INTERPRET=1 must be set
before triton is first imported, so ``test_triton_kernels_interpreted``
re-runs this same file in a subprocess with the flag set, where the backend
is Triton (float32 and bf16, tensors of a few thousand elements: the
interpreter is slow). tests/test_kernels_cpu.py compares the numba and
Triton bits.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zorun import kernels
from zorun.errors import ZorunError
from zorun.params import ParamSpace
from zorun.plan import Plan

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
BACKENDS = ["triton"] if INTERPRETED else ["torch", "numba"]
ODD_SHAPES = [(1,), (17,), (1000,), (3, 257)]  # 1-D blocks do not decay, the matrix does


@pytest.fixture(params=BACKENDS)
def backend(request):
    kernels.select(request.param)
    yield request.param
    kernels.select("auto")


def make_space(shapes=ODD_SHAPES, dtype=torch.float32, init="randn", seed=0) -> ParamSpace:
    gen = torch.Generator().manual_seed(seed)
    named = []
    for i, shape in enumerate(shapes):
        name = f"model.layers.{i}.mlp.{'weight' if len(shape) > 1 else 'bias'}"
        data = torch.randn(shape, generator=gen) if init == "randn" else torch.full(shape, float(init))
        named.append((name, torch.nn.Parameter(data.to(dtype))))
    return ParamSpace(named)


def values(space: ParamSpace):
    return [b.tensor.detach().clone() for b in space.blocks]


def z_of(shapes, plan: Plan):
    """The z of each active block (zeros elsewhere): perturb a zero space with α = 1 and unit scales."""
    space = make_space(shapes, init=0.0)
    kernels.perturb_(space, Plan(plan.seed, plan.blocks), 1.0)
    return values(space)


def plan_of(space: ParamSpace, seed=7, blocks=None, scaled=True) -> Plan:
    blocks = space.all_blocks() if blocks is None else torch.tensor(blocks)
    n = len(blocks)
    scale = torch.linspace(0.5, 2.0, n) if scaled else None
    weight = torch.linspace(1.5, 0.25, n) if scaled else None
    return Plan(seed, blocks, scale, weight)


def per_block(plan: Plan, name: str, b: int) -> float:
    i = plan.blocks.tolist().index(b)
    t = getattr(plan, name)
    return 1.0 if t is None else float(t[i])


# ---------------------------------------------------------------- statistics
def test_z_is_standard_normal_and_uncorrelated(backend):
    """n = 16384 per block; bounds are 4 standard errors (KS: the 0.1% critical value)."""
    n = 16384
    shapes = [(n,), (n,)]
    za, zb = z_of(shapes, Plan(1, torch.tensor([0, 1])))
    (zc, _) = z_of(shapes, Plan(2, torch.tensor([0, 1])))
    se = 1 / math.sqrt(n)
    normal = torch.distributions.Normal(0.0, 1.0)
    for z in (za, zb, zc):
        assert abs(z.mean().item()) < 4 * se
        assert abs(z.var().item() - 1) < 4 * math.sqrt(2 / n)
        ecdf = torch.arange(1, n + 1, dtype=torch.float64) / n
        ks = (ecdf - normal.cdf(z.sort().values.double())).abs().max().item()
        assert ks < 1.95 * se, f"KS statistic {ks:.4f}"
    for x, y in ((za, zb), (za, zc)):  # across blocks, across seeds
        r = torch.corrcoef(torch.stack([x, y]))[0, 1].item()
        assert abs(r) < 4 * se


# ------------------------------------------------------------------- algebra
def test_perturb_then_opposite_perturb_restores(backend):
    space = make_space()
    before = values(space)
    plan = plan_of(space)
    kernels.perturb_(space, plan, 1e-2)
    assert not torch.equal(space.blocks[2].tensor, before[2])
    kernels.perturb_(space, plan, -1e-2)
    for b, x0 in zip(space.blocks, before):
        torch.testing.assert_close(b.tensor.detach(), x0, rtol=0, atol=1e-6)


def test_update_regenerates_the_perturbation_z_exactly(backend):
    a, b = make_space(init=0.0), make_space(init=0.0)
    plan = plan_of(a, scaled=False)
    plan = Plan(plan.seed, plan.blocks, scale=torch.linspace(0.5, 2.0, len(plan.blocks)))
    kernels.perturb_(a, plan, 1.0)  # θ = s·z
    kernels.update_(b, plan, restore=0.0, coef=-1.0)  # θ = 0 + 1·s·z from the update pass
    for x, y in zip(values(a), values(b)):
        assert torch.equal(x, y)


def test_fused_update_equals_perturb_and_unfused_ops(backend):
    fused, unfused = make_space(), make_space()
    plan = plan_of(fused)
    restore, coef, decay = 1e-3, 0.05, 0.1
    kernels.update_(fused, plan, restore=restore, coef=coef, decay=decay)
    kernels.perturb_(unfused, plan, restore)
    for blk in unfused.blocks:
        if blk.decay:
            blk.tensor.data.mul_(1 - decay)
    weighted = Plan(plan.seed, plan.blocks, scale=plan.scale * plan.weight)
    kernels.perturb_(unfused, weighted, -coef)
    for x, y in zip(values(fused), values(unfused)):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


def test_multi_block_pass_equals_per_block_passes(backend):
    together, apart = make_space(), make_space()
    plan = plan_of(together)
    kernels.update_(together, plan, restore=0.5, coef=0.25, decay=0.01)
    for i, b in enumerate(plan.blocks.tolist()):
        single = Plan(plan.seed, torch.tensor([b]), plan.scale[i : i + 1], plan.weight[i : i + 1])
        kernels.update_(apart, single, restore=0.5, coef=0.25, decay=0.01)
    for x, y in zip(values(together), values(apart)):
        assert torch.equal(x, y)


def test_subset_touches_only_active_blocks(backend):
    space = make_space()
    before = values(space)
    buf = [torch.zeros_like(b.tensor, dtype=torch.float32) for b in space.blocks]
    plan = plan_of(space, blocks=[1, 3])
    kernels.update_(space, plan, restore=1.0, coef=0.5, decay=0.1)
    kernels.update_momentum_(space, plan, restore=0.0, grad=1.0, lr=0.1, momentum=0.9, buf=buf)
    for i, (blk, x0) in enumerate(zip(space.blocks, before)):
        changed = not torch.equal(blk.tensor.detach(), x0)
        assert changed == (i in (1, 3)), f"block {i}"
        assert bool(buf[i].abs().sum() > 0) == (i in (1, 3))


# ----------------------------------------------------------- stateful updates
def test_momentum_matches_the_formula(backend):
    space = make_space()
    theta = values(space)
    buf = [torch.randn(b.tensor.shape) for b in space.blocks]
    expected_buf = [x.clone() for x in buf]
    restore, grad, lr, mu, decay = 1e-3, 2.0, 0.05, 0.9, 0.1
    for seed in (11, 12):  # two steps: the buffer carries over
        plan = plan_of(space, seed=seed)
        z = z_of(ODD_SHAPES, plan)
        kernels.update_momentum_(space, plan, restore, grad, lr, mu, buf, decay=decay)
        for b, blk in enumerate(space.blocks):
            s, w = per_block(plan, "scale", b), per_block(plan, "weight", b)
            keep = 1 - decay if blk.decay else 1.0
            x = keep * (theta[b] + restore * s * z[b])
            expected_buf[b] = mu * expected_buf[b] + grad * w * s * z[b]
            theta[b] = x - lr * expected_buf[b]
    for b, blk in enumerate(space.blocks):
        torch.testing.assert_close(buf[b], expected_buf[b], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(blk.tensor.detach(), theta[b], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("per_block_step", [False, True])
def test_adam_matches_the_formula(backend, per_block_step):
    space = make_space()
    theta = values(space)
    m = [torch.zeros(b.tensor.shape) for b in space.blocks]
    v = [torch.zeros(b.tensor.shape) for b in space.blocks]
    em, ev = [x.clone() for x in m], [x.clone() for x in v]
    restore, grad, lr, (b1, b2), eps, decay = -1e-3, 3.0, 1e-2, (0.8, 0.95), 1e-6, 0.05
    for t in (1, 2):
        plan = plan_of(space, seed=20 + t)
        z = z_of(ODD_SHAPES, plan)
        steps = torch.arange(len(plan.blocks)) + t if per_block_step else t
        kernels.update_adam_(space, plan, restore, grad, lr, m, v, steps, betas=(b1, b2), eps=eps, decay=decay)
        for b, blk in enumerate(space.blocks):
            s, w = per_block(plan, "scale", b), per_block(plan, "weight", b)
            tb = b + t if per_block_step else t
            keep = 1 - decay if blk.decay else 1.0
            g = grad * w * s * z[b]
            em[b] = b1 * em[b] + (1 - b1) * g
            ev[b] = b2 * ev[b] + (1 - b2) * g * g
            step = lr * (em[b] / (1 - b1**tb)) / ((ev[b] / (1 - b2**tb)).sqrt() + eps)
            theta[b] = keep * (theta[b] + restore * s * z[b]) - step
    for b, blk in enumerate(space.blocks):
        torch.testing.assert_close(m[b], em[b], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(v[b], ev[b], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(blk.tensor.detach(), theta[b], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("smooth", [0.0, 0.3])
def test_hizoo_matches_the_formula(backend, smooth):
    """Along z/√H: θ ← k·(θ + r·s·z/√H); H ← H·(1 − α + α·(κ/s²)·z²) when α ≠ 0; θ −= c·w·s·z/√H (new H)."""
    space = make_space()
    theta = values(space)
    h = [torch.rand(b.tensor.shape, generator=torch.Generator().manual_seed(b.id)) + 0.5 for b in space.blocks]
    expected_h = [x.clone() for x in h]
    restore, coef, curvature, decay = 1e-3, 0.05, 2.5, 0.1
    plan = plan_of(space, seed=61)
    z = z_of(ODD_SHAPES, plan)
    kernels.update_hizoo_(space, plan, restore, coef, h, smooth=smooth, curvature=curvature, decay=decay)
    for b, blk in enumerate(space.blocks):
        s, w = per_block(plan, "scale", b), per_block(plan, "weight", b)
        keep = 1 - decay if blk.decay else 1.0
        x = keep * (theta[b] + restore * s * z[b] / expected_h[b].sqrt())
        if smooth:
            expected_h[b] = expected_h[b] * (1 - smooth + smooth * curvature / s**2 * z[b] ** 2)
        want = x - coef * w * s * z[b] / expected_h[b].sqrt()
        torch.testing.assert_close(h[b], expected_h[b], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(blk.tensor.detach(), want, rtol=1e-5, atol=1e-6)


def test_bad_state_is_refused_before_any_write(backend):
    space = make_space()
    before = values(space)
    buf = [torch.zeros(b.tensor.shape) for b in space.blocks]
    buf[3] = torch.zeros(5)
    with pytest.raises(ValueError, match="state of block 3"):
        kernels.update_momentum_(space, plan_of(space), 1.0, 1.0, 0.1, 0.9, buf)
    for blk, x0 in zip(space.blocks, before):
        assert torch.equal(blk.tensor.detach(), x0)


# ----------------------------------------------------- a mean (LDSD's policy)
def means_for(space: ParamSpace, with_mean=(0, 2, 3)):
    """A mean tensor for some blocks (None for the others): the direction is μ_b + s_b·z_b there, s_b·z_b elsewhere."""
    gen = torch.Generator().manual_seed(99)
    return [torch.randn(b.tensor.shape, generator=gen) if b.id in with_mean else None for b in space.blocks]


@pytest.mark.parametrize("mode", ["perturb", "plain", "momentum", "adam"])
def test_a_mean_is_fused_into_every_pass(backend, mode):
    """θ + α(μ + s·z) and the updates along w·(μ + s·z), against the formulas; blocks without a mean as before."""
    space = make_space()
    theta = values(space)
    mean = means_for(space)
    plan = plan_of(space, seed=31)
    with_mean = Plan(plan.seed, plan.blocks, plan.scale, plan.weight, mean=mean)
    z = z_of(ODD_SHAPES, plan)
    state = [[torch.randn(b.tensor.shape) for b in space.blocks] for _ in range(2)]
    expected_state = [[x.clone() for x in group] for group in state]
    restore, grad, lr, beta, decay = -1e-2, 1.5, 0.05, 0.9, 0.1
    if mode == "perturb":
        kernels.perturb_(space, with_mean, 0.3)
    elif mode == "plain":
        kernels.update_(space, with_mean, restore=restore, coef=lr * grad, decay=decay)
    elif mode == "momentum":
        kernels.update_momentum_(space, with_mean, restore, grad, lr, beta, state[0], decay=decay)
    else:
        state[1] = [x.abs() for x in state[1]]
        expected_state[1] = [x.clone() for x in state[1]]
        kernels.update_adam_(space, with_mean, restore, grad, lr, state[0], state[1], 3, decay=decay)
    for b, blk in enumerate(space.blocks):
        s, w = per_block(plan, "scale", b), per_block(plan, "weight", b)
        d = s * z[b] + (mean[b] if mean[b] is not None else 0.0)
        keep = 1 - decay if blk.decay else 1.0
        if mode == "perturb":
            want = theta[b] + 0.3 * d
        elif mode == "plain":
            want = keep * (theta[b] + restore * d) - lr * grad * w * d
        elif mode == "momentum":
            expected_state[0][b] = beta * expected_state[0][b] + grad * w * d
            want = keep * (theta[b] + restore * d) - lr * expected_state[0][b]
        else:
            g = grad * w * d
            m = expected_state[0][b] = 0.9 * expected_state[0][b] + 0.1 * g
            v = expected_state[1][b] = 0.999 * expected_state[1][b] + 0.001 * g * g
            want = keep * (theta[b] + restore * d) - lr * (m / (1 - 0.9**3)) / ((v / (1 - 0.999**3)).sqrt() + 1e-8)
        torch.testing.assert_close(blk.tensor.detach(), want, rtol=1e-5, atol=1e-6)
        for got, exp in zip(state, expected_state):
            torch.testing.assert_close(got[b], exp[b], rtol=1e-5, atol=1e-6)


def test_a_plan_without_mean_is_untouched_by_the_mean_path(backend):
    """mean=None, and a mean list holding None for every block, give the same bits as a plain Plan."""
    plain, listed = make_space(), make_space()
    plan = plan_of(plain, seed=41)
    kernels.update_(plain, plan, restore=1e-3, coef=0.2, decay=0.1)
    kernels.update_(listed, Plan(plan.seed, plan.blocks, plan.scale, plan.weight, mean=[None] * len(listed)),
                    restore=1e-3, coef=0.2, decay=0.1)
    for x, y in zip(values(plain), values(listed)):
        assert torch.equal(x, y)


def test_accumulate_adds_z_alone_and_leaves_theta(backend):
    space = make_space()
    theta = values(space)
    plan = plan_of(space, seed=51, blocks=[0, 2, 3])
    plan = Plan(plan.seed, plan.blocks, plan.scale, plan.weight, mean=means_for(space))
    z = z_of(ODD_SHAPES, plan)
    into = [torch.ones(b.tensor.shape) for b in space.blocks]
    kernels.accumulate_(space, plan, -0.7, into)
    for b, blk in enumerate(space.blocks):
        assert torch.equal(blk.tensor.detach(), theta[b])
        want = 1.0 - 0.7 * per_block(plan, "weight", b) * per_block(plan, "scale", b) * z[b] if b != 1 else torch.ones(1).expand_as(z[b])
        torch.testing.assert_close(into[b], want, rtol=1e-6, atol=1e-6)


def test_a_misshaped_mean_is_refused_before_any_write(backend):
    space = make_space()
    before = values(space)
    mean = means_for(space)
    mean[2] = torch.zeros(3)
    with pytest.raises(ValueError, match="mean of block 2"):
        kernels.perturb_(space, Plan(1, space.all_blocks(), mean=mean), 1.0)
    for blk, x0 in zip(space.blocks, before):
        assert torch.equal(blk.tensor.detach(), x0)


# --------------------------------------------------------------- 16-bit θ
def test_stochastic_rounding_moves_bf16_by_updates_below_half_an_ulp(backend):
    """θ = 1 in bf16 (ulp 2^-7 above, 2^-8 below); update −c·z with c = 2e-4, so |c·z| < 1.2e-3 < half an ulp.

    Round-to-nearest leaves every element at 1. Stochastic rounding is unbiased:
    the regression slope of (θ' − 1) on z is −c, with standard error
    ≤ (ulp/2)/‖z‖ ≈ 1.1e-5 at n = 32768; the bound is 5e-5.
    """
    n, c = 32768, 2e-4
    plan = Plan(5, torch.tensor([0]))
    (z,) = z_of([(n,)], plan)
    if not INTERPRETED:  # the interpreter casts fp32 -> bf16 by truncation, not to nearest (its _convert_float)
        nearest = make_space([(n,)], dtype=torch.bfloat16, init=1.0)
        kernels.update_(nearest, plan, restore=0.0, coef=c)
        assert torch.equal(nearest.blocks[0].tensor.float(), torch.ones(n))
    stochastic = make_space([(n,)], dtype=torch.bfloat16, init=1.0)
    kernels.update_(stochastic, plan, restore=0.0, coef=c, stochastic=True)
    moved = stochastic.blocks[0].tensor.detach().float() - 1.0
    assert (moved != 0).float().mean() > 0.01  # about E|c·z|/ulp ≈ 3% of the elements
    slope = (moved * z).sum() / (z * z).sum()
    assert abs(slope.item() + c) < 5e-5, f"slope {slope.item():.3e} vs {-c:.1e}"
    assert set(torch.unique(moved).tolist()) <= {0.0, 2.0**-7, -(2.0**-8)}


# ------------------------------------------- the Triton run, and dispatch
if INTERPRETED:

    def test_one_launch_per_dtype_over_the_active_tiles_only(backend, monkeypatch):
        from zorun.kernels import triton_kernels as tk

        grids, real = [], tk._pass_kernel

        class Spy:
            def __getitem__(self, grid):
                grids.append(grid)
                return real[grid]

        monkeypatch.setattr(tk, "_pass_kernel", Spy())
        named = [(f"layers.{i}.weight", torch.nn.Parameter(torch.zeros(n, dtype=dt)))
                 for i, (n, dt) in enumerate([(5000, torch.float32), (100, torch.float32), (9000, torch.float32),
                                              (300, torch.bfloat16)])]
        space = ParamSpace(named)
        kernels.perturb_(space, Plan(1, torch.tensor([0, 1, 3])), 1.0)
        assert grids == [(2 + 1,), (1,)]  # fp32: ceil(5000/4096) + ceil(100/4096) tiles; bf16: 1; block 2 idle
        assert torch.equal(space.blocks[2].tensor.detach(), torch.zeros(9000))

else:

    def test_triton_kernels_interpreted():
        """The checks above, Triton backend, on CPU under TRITON_INTERPRET=1 (a fresh process)."""
        root = Path(__file__).resolve().parents[1]
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider",
                               "--durations=5", __file__], cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
        passed = re.search(r"(\d+) passed", proc.stdout)
        assert passed and int(passed.group(1)) >= 10 and "failed" not in proc.stdout, proc.stdout[-3000:]

    def test_triton_on_cpu_without_interpreter_is_refused_in_one_line():
        with pytest.raises(ZorunError, match=r"kernels=triton needs CUDA tensors .* use kernels=auto"):
            kernels.select("triton", make_space())
        assert kernels.current() == "auto"

    def test_auto_uses_numba_on_cpu():
        assert kernels.select("auto", make_space()) == "kernels=auto -> cpu: numba"
        kernels.select("auto")
        with pytest.raises(ZorunError, match="kernels=fast is unknown"):
            kernels.select("fast")

    def test_triton_kernel_compiles_for_sm90_with_vectorised_full_tiles():
        """Compile (no GPU needed) what the interpreter cannot check: lowering to PTX for an H100, and
        16-byte vector loads/stores on full tiles (they come from the alignment hints)."""
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        from zorun.kernels import triton_kernels as tk
        from zorun.kernels.passes import ADAM, PLAIN

        for dtype, mode, stochastic in (("bf16", PLAIN, True), ("fp32", ADAM, False)):
            types = {"anchor": f"*{dtype}", "state_anchor": "*fp32", "itab": "*i64", "ftab": "*fp32", "seed": "i64",
                     "n_rows": "i32", "n_search": "i32", "h0": "fp32", "h1": "fp32", "h2": "fp32", "h3": "fp32"}
            consts = {"MODE": mode, "STOCHASTIC": stochastic, "ALIGNED": True, "TILE_": tk.TILE,
                      "ICOLS_": tk.ICOLS, "FCOL_": tk.FCOL}
            names = tk._pass_kernel.arg_names
            signature = {n: types.get(n, "constexpr") for n in names}
            constexprs = {(names.index(n),): v for n, v in consts.items()}
            attrs = {(i,): [["tt.divisibility", 16]] for i in range(4)}
            compiled = triton.compile(ASTSource(tk._pass_kernel, signature, constexprs, attrs),
                                      target=GPUTarget("cuda", 90, 32), options={"num_warps": tk.NUM_WARPS})
            ptx = compiled.asm["ptx"]
            assert "ld.global.v4.b32" in ptx and "st.global.v4.b32" in ptx, f"{dtype} mode {mode}: no vector access"

    def test_triton_kernel_with_a_mean_compiles_for_sm90_and_keeps_vector_access():
        """HAS_MEAN adds one fp32 load per element; the mean's alignment hint must keep it a 16-byte access."""
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        from zorun.kernels import triton_kernels as tk
        from zorun.kernels.passes import MOMENTUM

        types = {"anchor": "*bf16", "state_anchor": "*fp32", "itab": "*i64", "ftab": "*fp32", "seed": "i64",
                 "n_rows": "i32", "n_search": "i32", "h0": "fp32", "h1": "fp32", "h2": "fp32", "h3": "fp32"}
        consts = {"MODE": MOMENTUM, "STOCHASTIC": False, "ALIGNED": True, "TILE_": tk.TILE, "ICOLS_": tk.ICOLS,
                  "FCOL_": tk.FCOL, "HAS_MEAN": True}
        names = tk._pass_kernel.arg_names
        signature = {n: types.get(n, "constexpr") for n in names}
        constexprs = {(names.index(n),): v for n, v in consts.items()}
        attrs = {(i,): [["tt.divisibility", 16]] for i in range(4)}
        ptx = triton.compile(ASTSource(tk._pass_kernel, signature, constexprs, attrs),
                             target=GPUTarget("cuda", 90, 32), options={"num_warps": tk.NUM_WARPS}).asm["ptx"]
        # bf16 θ: 8-byte vectors; fp32 buf and mean: 16-byte vectors (buf load, mean load, buf store)
        assert ptx.count("ld.global.v4.b32") >= 2 and "st.global.v4.b32" in ptx
