"""The ZO optimiser family and the first-order baselines against torch references and their claims.

Equivalences run on the tiny Llama for 20 steps; Monte Carlo checks run on a
28-parameter MLP (two matrices and a bias) where the gradient is known from
autograd, with fixed seeds, the sample sizes stated in each test, and
tolerances derived in their docstrings.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from conftest import tiny_llama
from zorun.checkpoint import join_tensors, split_tensors
from zorun.estimators.zo_adam import ZOAdam
from zorun.estimators.fo_adam import FOAdam
from zorun.estimators.hizoo import HiZOO
from zorun.estimators.lozo import LOZOM
from zorun.estimators.zo_sgd_momentum import ZOMomentum
from zorun.estimators.schedule import LRSchedule
from zorun.kernels import z_chunks
from zorun.params import ParamSpace
from zorun.plan import Plan, mix_seed
from zorun.registry import ESTIMATORS
from zorun.samplers.uniform import UniformSampler
from zorun.timing import Clock


ZO = [n for n, cls in ESTIMATORS.items() if not cls.differentiable]
ALL = list(ESTIMATORS)


def est_cfg(name, **kw):
    """The estimator's registered schema with its defaults, as /schema/estimator/<name> (a fresh copy), and kw."""
    cfg = ConfigStore.instance().load(f"schema/estimator/{name}.yaml").node
    for k, v in kw.items():
        cfg[k] = v
    return cfg


def z_of(space, plan, b):
    t = space.blocks[b].tensor
    return torch.cat([z.clone() for z, _ in z_chunks(t, plan.seed, b)]).view_as(t)


def flat(space):
    return torch.cat([b.tensor.detach().reshape(-1).clone() for b in space.blocks])


def set_flat(space, values):
    with torch.no_grad():
        off = 0
        for b in space.blocks:
            b.tensor.copy_(values[off : off + b.numel].view_as(b.tensor))
            off += b.numel


# ------------------------------------------------------------------ problems
def llama_problem(seed=0):
    """The tiny Llama on one fixed batch: differentiable loss tensor, and its no-grad float."""
    model = tiny_llama(hidden=16, layers=1, vocab=32, seed=seed)
    ids = torch.randint(0, 32, (4, 12), generator=torch.Generator().manual_seed(1))

    def loss_t():
        logits = model(input_ids=ids).logits
        return F.cross_entropy(logits[:, :-1].reshape(-1, 32), ids[:, 1:].reshape(-1))

    return model, ParamSpace.from_model(model), loss_t


def mlp_problem(seed=0):
    """d = 28: W1 (4×4, decayed), b1 (4, never decayed), W2 (2×4); cross-entropy on 32 fixed points."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    x, y = torch.randn(32, 4, generator=gen), torch.randint(0, 2, (32,), generator=gen)

    def loss_t():
        return F.cross_entropy(model(x), y)

    return model, ParamSpace.from_model(model), loss_t


def no_grad_loss(loss_t):
    return lambda: float(loss_t().detach())


def gradient(space, loss_t):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_t(), [b.tensor for b in space.blocks])])


def random_plan(space, step, gen):
    """A sampler-like Plan: a random non-empty subset of blocks, scales and IPW-like weights."""
    n = len(space)
    active = torch.nonzero(torch.rand(n, generator=gen) < 0.6).flatten()
    if len(active) == 0:
        active = torch.tensor([step % n])
    k = len(active)
    return Plan(mix_seed(99, step), active, 0.5 + torch.rand(k, generator=gen), 0.2 + 2 * torch.rand(k, generator=gen))


# --------------------------------------------------------- torch equivalences
def drive_reference(space_ref, space_zo, plans, grads, opt):
    """Feed opt the estimates ĝ_b = Σ_j g_j·w_b·s_b·z_b(seed_j)/q the ZO run used; inactive blocks get no grad."""
    for plan, gs in zip(plans, grads):
        opt.zero_grad(set_to_none=True)
        for i, b in enumerate(plan.blocks.tolist()):
            est = sum(g * z_of(space_zo, plan.for_query(j), b) for j, g in enumerate(gs)) / len(gs)
            space_ref.blocks[b].tensor.grad = est * plan.weight_of(i) * plan.scale_of(i)
        opt.step()


def zo_run(est, space, loss, plans, lr):
    grads = []
    with torch.no_grad():
        for plan in plans:
            res = est.step(plan, loss, lr, Clock())
            assert res.finite
            grads.append(res.extras["grads"])
    return grads


@pytest.mark.parametrize("sampled", [False, True], ids=["uniform", "subsets"])
def test_zo_adam_equals_torch_adam(sampled):
    """20 steps: ZO-Adam vs torch.optim.Adam (uniform plans, decay 0.1 → AdamW) fed ĝ = g·w·s·z, to fp32 round-off."""
    _, space, loss_t = llama_problem()
    model_ref, space_ref, _ = llama_problem()
    gen = torch.Generator().manual_seed(0)
    plans = [random_plan(space, t, gen) if sampled else Plan(mix_seed(5, t), space.all_blocks()) for t in range(20)]
    wd = 0.0 if sampled else 0.1
    est = ZOAdam(est_cfg("zo-adam", lr=1e-2, weight_decay=wd), space)
    grads = zo_run(est, space, no_grad_loss(loss_t), plans, lr=1e-2)
    groups = [{"params": [b.tensor for b in space_ref.blocks if b.decay], "weight_decay": wd},
              {"params": [b.tensor for b in space_ref.blocks if not b.decay], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-2) if wd else torch.optim.Adam(groups, lr=1e-2)
    drive_reference(space_ref, space, plans, grads, opt)
    moved = 0
    for b, r in zip(space.blocks, space_ref.blocks):
        torch.testing.assert_close(b.tensor.detach(), r.tensor.detach(), atol=2e-6, rtol=1e-5)
        if b.id in est.t.nonzero().flatten().tolist():
            torch.testing.assert_close(est.m[b.id], opt.state[r.tensor]["exp_avg"], atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(est.v[b.id], opt.state[r.tensor]["exp_avg_sq"], atol=1e-7, rtol=1e-5)
            assert int(est.t[b.id]) == int(opt.state[r.tensor]["step"])
            moved += 1
    assert moved == len(space)


@pytest.mark.parametrize("q", [1, 2])
def test_zo_momentum_equals_torch_sgd(q):
    """20 steps with sampler-like subsets: buf and θ equal torch.optim.SGD(momentum=0.9) fed the q-averaged ĝ."""
    _, space, loss_t = llama_problem()
    _, space_ref, _ = llama_problem()
    gen = torch.Generator().manual_seed(1)
    plans = [random_plan(space, t, gen) for t in range(20)]
    est = ZOMomentum(est_cfg("zo-sgd-momentum", lr=1e-3, momentum=0.9, q=q), space)
    grads = zo_run(est, space, no_grad_loss(loss_t), plans, lr=1e-3)
    assert all(len(g) == q for g in grads)
    opt = torch.optim.SGD([b.tensor for b in space_ref.blocks], lr=1e-3, momentum=0.9)
    drive_reference(space_ref, space, plans, grads, opt)
    for b, r in zip(space.blocks, space_ref.blocks):
        torch.testing.assert_close(b.tensor.detach(), r.tensor.detach(), atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(est.buf[b.id], opt.state[r.tensor]["momentum_buffer"], atol=1e-5, rtol=1e-5)


def test_fo_adam_equals_autograd_adam_loop():
    """20 steps of fo-adam vs a hand-written Adam update on autograd gradients."""
    _, space, loss_t = llama_problem()
    _, space_ref, loss_ref = llama_problem()
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-8
    est = FOAdam(est_cfg("fo-adam", lr=lr), space)
    params = [b.tensor for b in space_ref.blocks]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t in range(1, 21):
        res = est.step(Plan(0, space.all_blocks()), loss_t, lr, Clock())
        assert res.finite and (res.forward_passes, res.backward_passes) == (1, 1)
        grads = torch.autograd.grad(loss_ref(), params)
        with torch.no_grad():
            for p, g, mi, vi in zip(params, grads, m, v):
                mi.mul_(b1).add_(g, alpha=1 - b1)
                vi.mul_(b2).addcmul_(g, g, value=1 - b2)
                p.sub_(lr * (mi / (1 - b1**t)) / ((vi / (1 - b2**t)).sqrt() + eps))
    for b, r in zip(space.blocks, space_ref.blocks):
        torch.testing.assert_close(b.tensor.detach(), r.tensor.detach(), atol=2e-6, rtol=1e-5)
        assert b.tensor.grad is None  # gradients freed after the step
    assert est.state_bytes == 2 * space.numel * 4 + 4 * len(space)  # exp_avg, exp_avg_sq and a step scalar each


# ------------------------------------------------------ expected directions
def drift(name, space, loss_t, steps, lr=1e-5, **kw):
    """θ_N − θ_0 after N small steps from one point: the estimator's mean update direction (times N·lr)."""
    est = ESTIMATORS[name](est_cfg(name, lr=lr, **kw), space)
    sampler = UniformSampler(OmegaConf.create({"name": "uniform"}), space, seed=3)
    start = flat(space)
    with torch.no_grad():
        for t in range(steps):
            assert est.step(sampler.plan(t), no_grad_loss(loss_t), lr, Clock()).finite
    return est, flat(space) - start


@pytest.mark.parametrize("name", ["mezo", "zo-sgd-momentum", "zo-sign", "zo-adam"])
def test_zo_update_direction_agrees_with_gradient(name):
    """N = 250 steps at lr 1e-5 on d = 28: E[update] ∝ −∇L, so the mean step's cosine is ≈ 1/sqrt(1 + d/N) ≈ 0.95 ≥ 0.9.

    (zo-adam: E[m̂/√v̂] ≈ ∇/sqrt(‖∇‖² + 2∇²) per coordinate, still within the bound here.)
    """
    _, space, loss_t = mlp_problem()
    grad = gradient(space, loss_t)
    _, d = drift(name, space, loss_t, steps=250)
    cos = F.cosine_similarity(-d, grad, dim=0).item()
    assert cos >= 0.9, cos


def test_hizoo_update_is_the_preconditioned_gradient():
    """HiZOO's claim: with curvature H, E[update] ∝ −H⁻¹∇L (Σ = H⁻¹ scales both probe and step).

    H is set to values spread over [0.2, 5] and frozen (hessian_smooth = 0); N = 300, d = 28: the
    mean step has cosine ≥ 0.9 with −H⁻¹∇L, and is clearly farther from −∇L itself.
    """
    _, space, loss_t = mlp_problem()
    grad = gradient(space, loss_t)
    est = HiZOO(est_cfg("hizoo", lr=1e-5, hessian_smooth=0.0), space)
    gen = torch.Generator().manual_seed(4)
    for h in est.h:
        h.copy_(0.2 * 25 ** torch.rand(h.shape, generator=gen))
    h_flat = torch.cat([h.reshape(-1) for h in est.h])
    sampler = UniformSampler(OmegaConf.create({"name": "uniform"}), space, seed=3)
    start = flat(space)
    with torch.no_grad():
        for t in range(300):
            res = est.step(sampler.plan(t), no_grad_loss(loss_t), 1e-5, Clock())
            assert res.forward_passes == 3
    d = flat(space) - start
    cos_pre = F.cosine_similarity(-d, grad / h_flat, dim=0).item()
    cos_plain = F.cosine_similarity(-d, grad, dim=0).item()
    assert cos_pre >= 0.9, cos_pre
    assert cos_pre - cos_plain >= 0.1, (cos_pre, cos_plain)


def test_hizoo_curvature_estimate_has_the_diagonal_hessian_as_fixed_point():
    """HiZOO's claim: H tracks the diagonal Hessian. On L = ½Σ a_i θ_i² (d = 8, a over 1..100) one probe's
    estimate Ĥ = |L+ + L− − 2L0|/(2ε²)·H·z² has E[Ĥ | H] = a + ½·H·Σ_j a_j/H_j, whose fixed point is
    H = (1 + d/2)·a: the EMA settles on a multiple of diag(A). Read Ĥ with α = 1 (H ← Ĥ), reset H each
    probe; N = 400 probes per H, every coordinate within 4 standard errors of the formula, both for a
    random H and at the fixed point (where E[Ĥ] = H).
    """
    d, n = 8, 400
    a = torch.logspace(0, 2, d, dtype=torch.float64)
    theta = nn.Parameter(torch.zeros(d))
    space = ParamSpace([("theta", theta)])
    est = HiZOO(est_cfg("hizoo", lr=0.0, eps=1e-2, hessian_smooth=1.0), space)
    sampler = UniformSampler(OmegaConf.create({"name": "uniform"}), space, seed=0)
    gen = torch.Generator().manual_seed(0)
    for h0 in (torch.exp(3 * torch.rand(d, generator=gen, dtype=torch.float64)), (1 + d / 2) * a):
        draws = []
        with torch.no_grad():
            for t in range(n):
                est.h[0].copy_(h0)
                est.step(sampler.plan(t), lambda: float(0.5 * (a * theta.double() ** 2).sum()), 0.0, Clock())
                draws.append(est.h[0].double().clone())
        draws = torch.stack(draws)
        expect = a + 0.5 * h0 * (a / h0).sum()
        se = draws.std(0) / n**0.5
        assert ((draws.mean(0) - expect).abs() <= 4 * se).all(), (draws.mean(0), expect, se)
    torch.testing.assert_close(expect, h0)  # the second H was the fixed point


@pytest.mark.parametrize("name", ["lozo", "lozo-m"])
def test_lozo_updates_are_low_rank_and_follow_the_projected_gradient(name):
    """LOZO's claim: within a lazy window (V fixed) every matrix moves by (·)·Vᵀ, so the summed update
    has rank ≤ r, and its expectation over U is −G·V·Vᵀ (the gradient projected on V's span):
    one window of N = 250 steps, r = 1 on W1 (4×4), W2 (2×4): σ₂/σ₁ < 0.01 (what is left is fp32
    round-off of the restores, ~1e-3 here; a full-rank drift has σ₂/σ₁ ~ 0.5) and cosine ≥ 0.9.
    """
    _, space, loss_t = mlp_problem()
    grad = gradient(space, loss_t)
    est, d = drift(name, space, loss_t, steps=250, rank=1, interval=250)
    off = 0
    for b in space.blocks:
        n, part, g = b.numel, d[off : off + b.numel], grad[off : off + b.numel]
        off += n
        if b.tensor.ndim < 2:
            continue
        sv = torch.linalg.svdvals(part.view_as(b.tensor).double())
        assert sv[1] / sv[0] < 0.01, sv
        v = est.v[b.id].double()
        projected = g.view_as(b.tensor).double() @ v @ v.t()
        cos = F.cosine_similarity(-part.double(), projected.reshape(-1), dim=0).item()
        assert cos >= 0.9, cos


def test_lozo_m_moves_momentum_into_the_new_subspace():
    """When V is redrawn, M ← M·V_oldᵀ·V_new/n before the step's (1 − β) update (public code's rule)."""
    _, space, loss_t = mlp_problem()
    est = LOZOM(est_cfg("lozo-m", lr=1e-3, rank=2, interval=2), space)
    sampler = UniformSampler(OmegaConf.create({"name": "uniform"}), space, seed=0)
    with torch.no_grad():
        for t in range(2):
            est.step(sampler.plan(t), no_grad_loss(loss_t), 1e-3, Clock())
        mats = [b.id for b in space.blocks if b.tensor.ndim == 2]
        before = {b: (est.m[b].clone(), est.v[b].clone()) for b in mats}
        plan = sampler.plan(2)
        res = est.step(plan, no_grad_loss(loss_t), 1e-3, Clock())
    for b in mats:
        m_old, v_old = before[b]
        v_new = est.v[b]
        assert not torch.equal(v_new, v_old)
        u = torch.randn(space.blocks[b].tensor.shape[0], 2,
                        generator=torch.Generator().manual_seed(mix_seed(plan.seed, b, 2)))
        expect = 0.9 * (m_old @ v_old.t() @ v_new / v_new.shape[0]) + 0.1 * res.grad * u
        torch.testing.assert_close(est.m[b], expect, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------- composition
@pytest.mark.parametrize("name", ZO)
def test_inactive_blocks_and_their_state_are_untouched(name):
    """A Plan with blocks {0, 2} of 3 active, with scales and weights: block 1's θ and state stay exactly."""
    _, space, loss_t = mlp_problem()
    est = ESTIMATORS[name](est_cfg(name, lr=1e-2, weight_decay=0.1), space)
    sampler = UniformSampler(OmegaConf.create({"name": "uniform"}), space, seed=0)
    plan = Plan(11, torch.tensor([0, 2]), torch.tensor([0.5, 2.0]), torch.tensor([3.0, 0.5]))
    with torch.no_grad():
        est.step(sampler.plan(0), no_grad_loss(loss_t), 1e-2, Clock())  # some state everywhere first
        theta0, state0 = space.snapshot(), copy.deepcopy(est.state_dict())
        res = est.step(plan, no_grad_loss(loss_t), 1e-2, Clock())
    assert res.finite and res.forward_passes == est.passes_per_step
    after = space.snapshot()
    assert torch.equal(after[1], theta0[1])
    assert not torch.equal(after[0], theta0[0]) and not torch.equal(after[2], theta0[2])
    for key, old in state0.items():
        new = est.state_dict()[key]
        if isinstance(old, list) and len(old) == len(space) and old[1] is not None:
            assert torch.equal(new[1], old[1]), key
        elif torch.is_tensor(old) and old.shape[:1] == (len(space),):
            assert torch.equal(new[1], old[1]), key


def through_checkpoint(state):
    """The state as a checkpoint stores it: tensors apart, the rest as JSON."""
    tensors = {}
    tree = json.loads(json.dumps(split_tensors(state, "", tensors)))
    return join_tensors(tree, {k: v.clone() for k, v in tensors.items()})


@pytest.mark.parametrize("name", ALL)
def test_state_dict_resumes_exactly(name):
    """3 steps, save (through the checkpoint format), 4 more; vs a fresh estimator loaded from the save
    doing the same 4: bit-identical θ. (lozo: ν = 2, so the resumed part crosses a V redraw.)"""
    _, space, loss_t = mlp_problem()
    extra = {"interval": 2} if name.startswith("lozo") else {}
    cfg = est_cfg(name, lr=1e-2, weight_decay=0.1, **extra)
    sampler = UniformSampler(OmegaConf.create({"name": "uniform"}), space, seed=2)
    loss = loss_t if ESTIMATORS[name].differentiable else no_grad_loss(loss_t)

    def steps(est, ts):
        for t in ts:
            assert est.step(sampler.plan(t), loss, 1e-2, Clock()).finite

    est = ESTIMATORS[name](cfg, space)
    steps(est, range(3))
    saved, theta = through_checkpoint(est.state_dict()), space.snapshot()
    steps(est, range(3, 7))
    first = space.snapshot()
    for b, t in zip(space.blocks, theta):
        b.tensor.data.copy_(t)
    again = ESTIMATORS[name](cfg, space)
    again.load_state_dict(saved)
    steps(again, range(3, 7))
    for a, b in zip(first, space.snapshot()):
        assert torch.equal(a, b)
    assert again.steps == 7


# ------------------------------------------------------------------ options
@pytest.mark.parametrize("name,kw,passes", [
    ("mezo", {"one_sided": True, "q": 3}, 4), ("zo-sgd-momentum", {"q": 2}, 4), ("zo-sign", {"q": 3}, 6),
    ("zo-adam", {"one_sided": True}, 2), ("hizoo", {}, 3), ("lozo", {"q": 2, "one_sided": True}, 3),
    ("lozo-m", {}, 2), ("fo-sgd", {}, 1), ("fo-adam", {}, 1)])
def test_passes_per_step_and_lr_zero_restores(name, kw, passes):
    """The counted forward passes match passes_per_step; with lr = 0 every perturbation is undone."""
    _, space, loss_t = mlp_problem()
    est = ESTIMATORS[name](est_cfg(name, **kw), space)
    start = space.snapshot()
    loss = loss_t if est.differentiable else no_grad_loss(loss_t)
    with torch.no_grad() if not est.differentiable else torch.enable_grad():
        res = est.step(Plan(3, space.all_blocks()), loss, 0.0, Clock())
    assert res.forward_passes == est.passes_per_step == passes
    for b, t0 in zip(space.blocks, start):
        torch.testing.assert_close(b.tensor.detach(), t0, atol=1e-6, rtol=0)


def test_state_bytes():
    """0 for mezo/zo-sign, 1× fp32 params for momentum and hizoo, 2× for zo-adam, r·(m+n)-sized for lozo."""
    _, space, _ = llama_problem()
    p = space.numel * 4
    mats = [b.tensor.shape for b in space.blocks if b.tensor.ndim == 2]
    vecs = sum(b.numel for b in space.blocks if b.tensor.ndim == 1)
    r = 2
    expect = {"mezo": 0, "zo-sign": 0, "zo-sgd-momentum": p, "hizoo": p, "zo-adam": 2 * p,
              "lozo": 4 * r * sum(n for _, n in mats),
              "lozo-m": 4 * r * sum(m + n for m, n in mats) + 4 * vecs}
    for name, nbytes in expect.items():
        assert ESTIMATORS[name](est_cfg(name, rank=r) if name.startswith("lozo") else est_cfg(name), space
                                ).state_bytes == nbytes, name
    assert expect["lozo"] < p / 4  # low rank: far below one copy of the parameters


def test_lr_schedules():
    """Warm-up from 0, then constant / linear / cosine to min_lr_ratio·lr at the last step."""
    s = LRSchedule(1.0, total_steps=110, kind="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert [s(0), s(5), s(10)] == [0.0, 0.5, 1.0]
    assert s(60) == pytest.approx(0.55) and s(110) == pytest.approx(0.1)
    lin = LRSchedule(2.0, total_steps=100, kind="linear")
    assert [lin(0), lin(50), lin(100)] == [2.0, 1.0, 0.0]
    assert LRSchedule(3.0, 100)(99) == 3.0
    with pytest.raises(ValueError):
        LRSchedule(1.0, 10, kind="step")


# ------------------------------------------------------- 16-bit θ: rounding
def _first_update(name, dtype, lr, stochastic):
    """Δθ of one step from θ = 1 (a 256×128 block) with a scripted loss oracle; ε = 1e-5 vanishes in bf16."""
    space = ParamSpace([("layers.0.mlp.weight", nn.Parameter(torch.ones(256, 128, dtype=dtype)))])
    est = ESTIMATORS[name](est_cfg(name, lr=lr, eps=1e-5, stochastic_rounding=stochastic), space)
    losses = itertools.cycle([1.0, 0.0, 0.5])
    est.step(Plan(mix_seed(3, 0), space.all_blocks()), lambda: next(losses), lr, Clock())
    return space.blocks[0].tensor.detach().float() - 1.0


@pytest.mark.parametrize("name", ZO)
def test_bf16_updates_below_half_an_ulp_move_theta_in_expectation(name):
    """Scaled so every fp32 update is below half a bf16 ulp at 1 (2^-9): nearest rounding leaves θ at 1;
    stochastic rounding, the default, moves it by the fp32 update on average (regression slope 1 ± 5 SE)."""
    unit = _first_update(name, torch.float32, 1.0, True).abs().max().item()
    lr = 1.5e-3 / unit  # every step here is linear in lr
    want = _first_update(name, torch.float32, lr, True)
    assert 0 < want.abs().max() < 2.0**-9
    assert torch.equal(_first_update(name, torch.bfloat16, lr, False), torch.zeros_like(want))
    assert est_cfg(name).stochastic_rounding is True
    got = _first_update(name, torch.bfloat16, lr, True)
    assert (got != 0).float().mean() > 0.02
    slope = float((got * want).sum() / (want * want).sum())
    assert abs(slope - 1) < 0.15, f"{name}: slope {slope:.3f}"


def test_stochastic_rounding_is_logged_for_16_bit_parameters(caplog):
    caplog.set_level(logging.INFO, logger="zorun.estimators.base")
    for dtype, stochastic in ((torch.bfloat16, True), (torch.float16, False), (torch.float32, True)):
        space = ParamSpace([("layers.0.mlp.weight", nn.Parameter(torch.ones(4, 4, dtype=dtype)))])
        ESTIMATORS["mezo"](est_cfg("mezo", stochastic_rounding=stochastic), space)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["estimator.stochastic_rounding=true: updates round the 1 16-bit parameter tensors stochastically",
                     "estimator.stochastic_rounding=false: updates round the 1 16-bit parameter tensors to nearest"]
