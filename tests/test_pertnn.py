"""sampler=pertnn: the networks, their inputs, the normalisation, the Plan, every estimator, exact resume."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_llama
from omegaconf import OmegaConf

from zorun import kernels
from zorun.estimators.base import StepResult
from zorun.params import ParamSpace
from zorun.plan import Plan
from zorun.registry import ESTIMATORS
from zorun.samplers import pertnn
from zorun.samplers.pertnn import BlockNets, PertNNSampler, block_moments, effective_sizes, normalisation
from zorun.timing import Clock

SAMPLER = dict(name="pertnn", checkpoint=None, rename=[], normalize=True, embed_tokens=15, batch_size=4,
               log_every=1, init_seed=0)


def make_sampler(space, **over) -> PertNNSampler:
    return PertNNSampler(OmegaConf.create({**SAMPLER, **over}), space, seed=0)


def test_stacked_networks_equal_one_sequential_per_block():
    nets = BlockNets(7, generator=torch.Generator().manual_seed(0))
    x = torch.randn(7, 5)
    for b in range(7):
        seq = torch.nn.Sequential(torch.nn.Linear(5, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
        seq.load_state_dict(nets.block_state(b))
        torch.testing.assert_close(nets(x)[b], seq(x[b]).abs()[0], rtol=1e-6, atol=1e-7)


def test_features_are_mean_unbiased_variance_losses_and_previous_sigma(monkeypatch):
    monkeypatch.setattr(pertnn, "MOMENT_CHUNK", 1000)  # several chunks per block: Chan's merge is exercised
    model = tiny_llama(hidden=16, layers=1, vocab=64)
    with torch.no_grad():
        model.model.norm.weight.add_(100.0)  # a large mean: E[x²] − E[x]² would cancel badly
    space = ParamSpace.from_model(model)
    x = make_sampler(space).features(torch.tensor([0.5, 0.25], dtype=torch.float64), torch.arange(len(space)) / 10)
    for b in space.blocks:
        t = b.tensor.detach().double()
        expect = torch.tensor([t.mean(), t.var(), 0.5, 0.25, b.id / 10], dtype=torch.float32)
        torch.testing.assert_close(x[b.id], expect, rtol=1e-5, atol=1e-9)
    half = torch.randn(5000, dtype=torch.float64).to(torch.bfloat16)  # 16-bit blocks: fp32 chunks
    mean, var = block_moments(half).tolist()
    assert math.isclose(mean, half.double().mean().item(), abs_tol=1e-7)
    assert math.isclose(var, half.double().var().item(), rel_tol=1e-6)


def test_normalisation_preserves_the_trace_with_the_embedding_rule():
    """Σ_b d_b (f σ_b)² = Σ_b d_b, with d_b = hidden × 15 × batch for the embedding matrix."""
    model = tiny_llama(hidden=16, layers=1, vocab=64)
    space = ParamSpace.from_model(model)
    sizes = effective_sizes(space, embed_tokens=15, batch_size=4)
    embed = [b for b in space.blocks if "embed_tokens" in b.name]
    assert len(embed) == 1 and sizes[embed[0].id] == 16 * 15 * 4 != embed[0].numel
    assert all(sizes[b.id] == b.numel for b in space.blocks if b not in embed)
    sampler = make_sampler(space)
    for seed in range(5):
        sigma = torch.rand(len(space), generator=torch.Generator().manual_seed(seed)) * 3
        scale, f = sampler.scales(sigma)
        assert f == normalisation(sigma, sizes)
        assert math.isclose(float((sizes * scale.double() ** 2).sum()), float(sizes.sum()), rel_tol=1e-6)


@pytest.mark.parametrize("normalize", [True, False])
def test_effective_step_is_pinned_by_the_normalisation_and_not_without_it(normalize):
    """E‖u‖² of the perturbation the kernels apply, u_b = s_b z_b, Monte Carlo over 64 seeds (relative std of
    the mean < 1% here): the dimension with the normalisation, Σ d_b σ_b² without it (the paper's ablation:
    the effective lr η‖u‖²/d then drifts with the networks' output)."""
    kernels.select("torch")
    params = [torch.nn.Parameter(torch.zeros(n)) for n in (300, 1200, 2500)]
    space = ParamSpace([(f"layers.{i}.weight", p) for i, p in enumerate(params)])
    sampler = make_sampler(space, normalize=normalize)
    sigma = torch.tensor([2.0, 0.5, 0.1])
    scale, _ = sampler.scales(sigma)
    dim, raw = space.numel, float((effective_sizes(space, 15, 4) * sigma.double() ** 2).sum())
    norms = []
    for seed in range(64):
        with torch.no_grad():
            for p in params:
                p.zero_()
        kernels.perturb_(space, Plan(seed=seed, blocks=space.all_blocks(), scale=scale), 1.0)
        norms.append(sum(float(p.detach().square().sum()) for p in params))
    mean = sum(norms) / len(norms)
    expected = dim if normalize else raw
    assert abs(mean / expected - 1) < 0.03
    assert abs(raw / dim - 1) > 0.5  # the two settings are far apart for these σ


def test_plan_feeds_the_previous_losses_and_sigma_back():
    space = ParamSpace.from_model(tiny_llama(hidden=16, layers=1, vocab=64))
    sampler = make_sampler(space)
    first = sampler.plan(0)
    x0 = sampler.features(torch.zeros(2, dtype=torch.float64), torch.ones(len(space)))
    with torch.no_grad():
        sigma0 = sampler.nets(x0)
    torch.testing.assert_close(first.scale, sampler.scales(sigma0)[0])
    sampler.observe(first, StepResult(0.6, 1.0, 2, extras={"loss_plus": 0.7, "loss_minus": 0.5}))
    x1 = sampler.features(sampler.losses, sampler.sigma)
    assert x1[:, 2].eq(0.7).all() and x1[:, 3].eq(0.5).all()
    torch.testing.assert_close(x1[:, 4], sigma0)
    assert sampler.log_record()["norm_factor"] == sampler.factor


ZO = sorted(name for name, cls in ESTIMATORS.items() if not cls.differentiable)


@pytest.mark.parametrize("name", ZO)
def test_every_zo_estimator_perturbs_and_updates_by_the_plan_scale(name, compose):
    """A block whose scale is 0 is neither perturbed nor updated; the others move (every ZO estimator)."""
    kernels.select("torch")
    cfg = compose(f"estimator={name}")
    model = tiny_llama(hidden=16, layers=1, vocab=64)
    space = ParamSpace.from_model(model)
    estimator = ESTIMATORS[name](cfg.estimator, space)
    ids = torch.randint(64, (2, 8), generator=torch.Generator().manual_seed(0))
    scale = torch.ones(len(space))
    frozen = next(b for b in space.blocks if b.tensor.ndim == 2 and "embed" not in b.name)
    scale[frozen.id] = 0.0
    before = space.snapshot()
    seen = []

    @torch.no_grad()
    def loss():
        seen.append(frozen.tensor.detach().clone())
        return float(model(input_ids=ids, labels=ids).loss)

    result = estimator.step(Plan(seed=3, blocks=space.all_blocks(), scale=scale), loss, 1e-2, Clock())
    assert result.finite
    assert all(torch.equal(t, before[frozen.id]) for t in seen)  # not perturbed during the probes
    assert torch.equal(frozen.tensor.detach(), before[frozen.id])
    assert any(not torch.equal(b.tensor.detach(), before[b.id]) for b in space.blocks if b is not frozen)
