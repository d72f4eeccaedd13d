"""MeZO's estimate against autograd, and the fused restore+update against the unfused sequence."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import tiny_llama
from zorun import kernels
from zorun.estimators.mezo import MeZO
from zorun.kernels import z_chunks
from zorun.params import ParamSpace
from zorun.plan import Plan
from zorun.samplers.uniform import UniformSampler
from zorun.timing import Clock


def _est_cfg(**kw):
    base = dict(name="mezo", lr=1e-3, eps=1e-3, weight_decay=0.0, one_sided=False, q=1)
    base.update(kw)
    return OmegaConf.create(base)


def _flat_z(space, plan):
    parts = []
    for b in plan.blocks.tolist():
        parts.append(torch.cat([z.clone() for z, _ in z_chunks(space.blocks[b].tensor, plan.seed, b)]))
    return torch.cat(parts)


def _setup(seed=0):
    model = tiny_llama(hidden=16, layers=1, vocab=32, seed=seed)
    # a few hundred trainable entries keep the Monte Carlo affordable (cosine ~ 1/sqrt(1 + d/N))
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith(("q_proj.weight", "v_proj.weight", "input_layernorm.weight")))
    ids = torch.randint(0, 32, (4, 12), generator=torch.Generator().manual_seed(1))

    def loss_t():
        logits = model(input_ids=ids).logits
        return F.cross_entropy(logits[:, :-1].reshape(-1, 32), ids[:, 1:].reshape(-1))

    return model, ParamSpace.from_model(model), loss_t


def test_mezo_estimate_matches_autograd_in_expectation():
    """N = 4000 seeds, d = 528 trainable entries: mean of g·z has cosine >= 0.9 with the gradient."""
    model, space, loss_t = _setup()
    grad = torch.autograd.grad(loss_t(), [b.tensor for b in space.blocks])
    grad = torch.cat([g.reshape(-1) for g in grad])
    assert space.numel == 528

    est = MeZO(_est_cfg(), space)
    sampler = UniformSampler(OmegaConf.create({"name": "uniform"}), space, seed=0)
    before = torch.cat([b.tensor.detach().reshape(-1).clone() for b in space.blocks])
    n, acc = 4000, torch.zeros_like(grad)
    with torch.no_grad():
        for step in range(n):
            plan = sampler.plan(step)
            res = est.step(plan, lambda: float(loss_t()), lr=0.0, clock=Clock())
            acc += res.grad * _flat_z(space, plan)
    after = torch.cat([b.tensor.detach().reshape(-1) for b in space.blocks])
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)  # lr 0: perturbations fully undone
    cos = F.cosine_similarity(acc / n, grad, dim=0).item()
    assert cos >= 0.9, cos


def test_fused_restore_update_equals_unfused_sequence():
    model, space, _ = _setup(seed=3)
    for p in model.parameters():
        p.requires_grad_(True)
    space = ParamSpace.from_model(model)
    plan = Plan(seed=1234, blocks=space.all_blocks(),
                scale=torch.linspace(0.5, 2.0, len(space)), weight=torch.linspace(2.0, 0.1, len(space)))
    eps, coef, decay = 1e-3, 3e-2, 1e-2
    start = space.snapshot()

    kernels.perturb_(space, plan, eps)
    kernels.perturb_(space, plan, -2 * eps)
    kernels.update_(space, plan, restore=eps, coef=coef, decay=decay)
    fused = space.snapshot()

    for block, t0 in zip(space.blocks, start):
        block.tensor.data.copy_(t0)
    kernels.perturb_(space, plan, eps)
    kernels.perturb_(space, plan, -2 * eps)
    kernels.perturb_(space, plan, eps)  # restore
    with torch.no_grad():
        for block in space.blocks:
            if block.decay:
                block.tensor.mul_(1 - decay)
    step = Plan(seed=plan.seed, blocks=plan.blocks, scale=plan.scale * plan.weight)
    kernels.perturb_(space, step, -coef)  # θ −= coef·w·s·z
    for a, b, t0 in zip(fused, space.snapshot(), start):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)
        assert not torch.equal(a, t0)  # the update did move every block


def test_weight_decay_skips_bias_and_norm():
    model, space, _ = _setup()
    for p in model.parameters():
        p.requires_grad_(True)
    space = ParamSpace.from_model(model)
    decayed = {b.name for b in space.blocks if b.decay}
    assert "model.layers.0.self_attn.q_proj.weight" in decayed
    assert not any("norm" in n for n in decayed)
    plan = Plan(seed=7, blocks=space.all_blocks())
    norms = [b for b in space.blocks if "norm" in b.name]
    before = [b.tensor.detach().clone() for b in norms]
    kernels.update_(space, plan, restore=0.0, coef=0.0, decay=0.5)
    for b, t0 in zip(norms, before):
        assert torch.equal(b.tensor, t0)


def test_one_sided_and_queries_restore_parameters_and_count_passes():
    _, space, loss_t = _setup()
    start = space.snapshot()
    sampler = UniformSampler(OmegaConf.create({"name": "uniform"}), space, seed=0)
    for one_sided, q, passes in [(True, 3, 4), (False, 3, 6)]:
        est = MeZO(_est_cfg(one_sided=one_sided, q=q), space)
        with torch.no_grad():
            res = est.step(sampler.plan(0), lambda: float(loss_t()), lr=0.0, clock=Clock())
        assert res.forward_passes == passes == est.passes_per_step
        for b, t0 in zip(space.blocks, start):
            torch.testing.assert_close(b.tensor.detach(), t0, atol=1e-6, rtol=0)


def test_same_seed_same_trajectory():
    runs = []
    for _ in range(2):
        _, space, loss_t = _setup()
        est = MeZO(_est_cfg(), space)
        sampler = UniformSampler(OmegaConf.create({"name": "uniform"}), space, seed=5)
        with torch.no_grad():
            for step in range(5):
                est.step(sampler.plan(step), lambda: float(loss_t()), lr=1e-2, clock=Clock())
        runs.append(space.snapshot())
    for a, b in zip(*runs):
        assert torch.equal(a, b)
