"""sampler=adalezo: IPW unbiasedness by Monte Carlo, policy behaviour, work per step, exact resume.

The end-to-end checks run the real MeZO estimator and kernels on a quadratic
L(θ) = ½·Σ_l a_l·‖θ_l − c_l‖² whose gradient a_l·(θ_l − c_l) is known; with a
central difference on a quadratic, g = ∇L·z exactly (up to float32 rounding),
so the only randomness is the sampler's draw and z.
"""

from __future__ import annotations

import copy
import math

import torch
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM

from zorun.estimators.base import StepResult, ZOEstimatorConfig
from zorun.estimators.mezo import MeZO
from zorun.params import ParamSpace
from zorun.samplers.adalezo import AdaLeZOSampler, AdaLeZOSamplerConfig, depth_prior, ipw_weights
from zorun.samplers.uniform import UniformSampler
from zorun.timing import Clock


class Layer(torch.nn.Module):
    def __init__(self, size: int, gen: torch.Generator):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(size, generator=gen))


class Quadratic(torch.nn.Module):
    """One tensor per layer, named `layers.<i>.weight` as in HF models, so ParamSpace makes N layers."""

    def __init__(self, curvature, size: int = 6, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.layers = torch.nn.ModuleList(Layer(size, gen) for _ in curvature)
        self.curvature = torch.tensor(curvature, dtype=torch.float64)
        self.targets = torch.randn(len(curvature), size, generator=gen, dtype=torch.float64)

    @torch.no_grad()
    def loss(self) -> float:
        return float((0.5 * self.curvature * (theta(self) - self.targets).pow(2).sum(1)).sum())

    @torch.no_grad()
    def gradient(self) -> torch.Tensor:
        """∇L as an (N, size) matrix, one row per layer."""
        return self.curvature[:, None] * (theta(self) - self.targets)


def sampler_cfg(**kw):
    return OmegaConf.structured(AdaLeZOSamplerConfig(**kw))


def mezo(space, lr=1.0):
    return MeZO(OmegaConf.structured(ZOEstimatorConfig(lr=lr, eps=1e-3)), space)


def theta(model: Quadratic) -> torch.Tensor:
    """θ as an (N, size) float64 matrix."""
    return torch.stack([layer.weight.detach() for layer in model.layers]).double()


def mc_estimates(model: Quadratic, sampler, steps: int) -> torch.Tensor:
    """ĝ of `steps` independent MeZO steps from the same θ: (θ_before − θ_after)/η with η = 1; (M, N, size)."""
    est, clock = mezo(sampler.space), Clock()
    start = theta(model)
    out = torch.empty(steps, *start.shape, dtype=torch.float64)
    for t in range(steps):
        est.step(sampler.plan(t), model.loss, 1.0, clock)
        out[t] = start - theta(model)
        with torch.no_grad():
            for layer, row in zip(model.layers, start):
                layer.weight.copy_(row)
    return out


# A fixed, clearly non-uniform policy over N = 5 layers: p ≈ (0.07, 0.10, 0.15, 0.27, 0.41),
# k = 2 draws with replacement (the likeliest layer is drawn twice 17% of the time).
CURVATURE = (1.0, 2.0, 0.5, 1.5, 1.0)
FIXED = dict(k_ratio=0.4, tau=0.5, ipw_clip=math.inf)
FIXED_REWARDS = torch.tensor([0.1, 0.3, 0.5, 0.8, 1.0], dtype=torch.float64)


def fixed_policy_sampler(space, seed=0, **kw):
    s = AdaLeZOSampler(sampler_cfg(**{**FIXED, **kw}), space, seed)
    s.rewards, s.observed = FIXED_REWARDS.clone(), 1  # observe() is never called: the policy stays fixed
    return s


def test_sampler_draws_k_times_with_replacement_from_its_policy():
    """E[c_l] = k·p_l over M = 3,000 of the sampler's own draws (5 standard errors); repeats occur."""
    space = ParamSpace.from_model(Quadratic(CURVATURE))
    s = fixed_policy_sampler(space)
    p, m = s.probabilities(), 3000
    counts = torch.stack([s.redraw(t).counts for t in range(m)]).double()
    assert torch.all(counts.sum(1) == s.k) and s.k == 2
    se = counts.std(0) / math.sqrt(m)
    assert torch.all((counts.mean(0) - s.k * p).abs() <= 5 * se)
    assert (counts == 2).any()


def test_ipw_weights_are_unbiased_and_the_clip_bias_is_as_predicted():
    """E[w_l·1(l ∈ A)] = 1 for every layer without the clip; with clip C it is min(1, C·k·p_l).

    M = 400,000 multinomial draws (k = 2 with replacement) through the sampler's weight formula;
    tolerance 5 standard errors from the sample variance. Dropping c_l (or using 1/p_l) fails by > 20 SE.
    """
    space = ParamSpace.from_model(Quadratic(CURVATURE))
    m, gen = 400_000, torch.Generator().manual_seed(0)
    for clip in (math.inf, 10.0, 2.0):
        s = fixed_policy_sampler(space, ipw_clip=clip)
        p = s.probabilities()
        picks = torch.multinomial(p.expand(m, -1), s.k, replacement=True, generator=gen)
        counts = torch.zeros(m, p.numel(), dtype=torch.float64).scatter_add_(1, picks, torch.ones(m, s.k, dtype=torch.float64))
        w = ipw_weights(p, counts, s.k, clip)
        mean, se = w.mean(0), w.std(0) / math.sqrt(m)
        predicted = torch.clamp(clip * s.k * p, max=1.0)
        print(f"clip={clip}: p={p.numpy().round(3)} E[w·1(A)] measured {mean.numpy().round(3)} "
              f"predicted {predicted.numpy().round(3)}")
        assert torch.all((mean - predicted).abs() <= 5 * se)
        if clip >= 10.0:  # 1/(k·p_l) <= 7.4 here: the default clip does not bind
            assert torch.allclose(predicted, torch.ones_like(predicted))
        else:
            assert predicted[0] < 0.3  # clip 2 biases the rarest layer's update to about 27% of its gradient


def test_ipw_estimate_matches_mezo_layer_by_layer():
    """End to end (sampler → MeZO → kernels): mean IPW ĝ = mean uniform ĝ = ∇L, every layer drawn or not.

    M = 1,500 steps per sampler from the same θ. Per layer, t_l = ⟨ĝ_l, ∇_l⟩/‖∇_l‖² has mean 1;
    tolerance 4.5 standard errors from the sample variance, for each sampler against 1 and for the
    two-sample difference. (A weight without c_l puts the likeliest layer at 0.66 ± 0.05; 1/p_l at 1.7-2.2.)
    """
    m = 1500
    model = Quadratic(CURVATURE, seed=1)
    space = ParamSpace.from_model(model)
    grad = model.gradient()
    stats = {}
    for name, sampler in (("adalezo", fixed_policy_sampler(space, seed=2)),
                          ("uniform", UniformSampler(OmegaConf.create({"name": "uniform"}), space, 3))):
        t = (mc_estimates(model, sampler, m) * grad).sum(-1) / grad.pow(2).sum(-1)
        stats[name] = (t.mean(0), t.std(0) / math.sqrt(m))
        print(f"{name}: t_l {stats[name][0].numpy().round(3)} ± {stats[name][1].numpy().round(3)}")
    (a_mean, a_se), (u_mean, u_se) = stats["adalezo"], stats["uniform"]
    assert torch.all((a_mean - 1).abs() <= 4.5 * a_se)
    assert torch.all((u_mean - 1).abs() <= 4.5 * u_se)
    assert torch.all((a_mean - u_mean).abs() <= 4.5 * (a_se**2 + u_se**2).sqrt())


def test_plan_holds_the_active_layers_blocks_with_their_weights():
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(5))  # two blocks per layer
    space = ParamSpace.from_model(model)
    s = fixed_policy_sampler(space, seed=4)
    for step in range(20):
        plan = s.plan(step)
        w = s.weights(s.draw)
        active = s.draw.active().tolist()
        assert plan.blocks.tolist() == [b for layer in active for b in space.layer_blocks[layer]]
        assert plan.weight.tolist() == [float(w[space.blocks[b].layer].float()) for b in plan.blocks.tolist()]
        assert plan.seed == s.step_seed(step) and plan.scale is None


def test_policy_floor_order_and_temperature():
    rewards = torch.tensor([0.0, 0.2, 5.0, 1.0, 3.0], dtype=torch.float64)
    gamma, n = 0.05, rewards.numel()
    s = AdaLeZOSampler(sampler_cfg(gamma=gamma), ParamSpace.from_model(Quadratic([1.0] * n)), 0)
    s.rewards, s.observed = rewards, 1
    p = s.probabilities()
    assert math.isclose(float(p.sum()), 1.0, rel_tol=1e-12)
    assert torch.equal(torch.argsort(p), torch.argsort(rewards))  # higher reward, higher probability
    assert float(p.min()) >= gamma / n
    s_hot = AdaLeZOSampler(sampler_cfg(tau=1e9, gamma=0.0), s.space, 0)
    s_hot.rewards, s_hot.observed = rewards, 1
    assert torch.allclose(s_hot.probabilities(), torch.full((n,), 1 / n, dtype=torch.float64), atol=1e-9)  # τ → ∞: uniform
    assert torch.allclose(AdaLeZOSampler(sampler_cfg(), s.space, 0).probabilities(),
                          torch.full((n,), 1 / n, dtype=torch.float64))


def test_policy_moves_to_the_layer_with_the_large_gradient():
    """N = 10 layers, layer 6 has 30× the curvature; defaults (k = 2, τ 0.2, γ 0.01); MeZO with η = 1e-9.

    For 3 seeds, within 300 steps layer 6 becomes the likeliest layer and holds > 40% of the mass on
    average over steps 200–300 (uniform: 10%).
    """
    curvature = [1.0] * 10
    curvature[6] = 30.0
    for seed in range(3):
        model = Quadratic(curvature, seed=seed)
        space = ParamSpace.from_model(model)
        s, est, clock = AdaLeZOSampler(sampler_cfg(), space, seed), mezo(space, 1e-9), Clock()
        late = []
        for t in range(300):
            plan = s.plan(t)
            s.observe(plan, est.step(plan, model.loss, 1e-9, clock))
            if t >= 200:
                late.append(s.probabilities())
        mean = torch.stack(late).mean(0)
        assert int(mean.argmax()) == 6 and float(mean[6]) > 0.4, (seed, mean)


def test_warm_start_favours_the_deepest_layers_until_rewards_replace_it():
    space = ParamSpace.from_model(Quadratic([1.0] * 10))
    assert depth_prior(10).tolist() == [0.0] * 6 + [1.0] * 4
    s = AdaLeZOSampler(sampler_cfg(warm_start=True), space, 0)
    p = s.probabilities()
    assert float(p[6:].sum()) > 0.95
    plan = s.plan(0)
    s.observe(plan, StepResult(loss=1.0, grad=-2.0, forward_passes=2))
    active = s.draw.active()
    expected = depth_prior(10) * 2.0
    expected[active] = 0.9 * expected[active] + 0.1 * 2.0
    assert torch.allclose(s.rewards, expected)


def test_elements_written_per_step_on_opt125m_shapes():
    """k_ratio 0.2 on OPT-125M (14 layers, k = 2): ≤ 0.25× uniform's elements on average over 1,000 plans."""
    arch = dict(model_type="opt", vocab_size=50272, hidden_size=768, word_embed_proj_dim=768, ffn_dim=3072,
                num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=2048)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**arch))
    space = ParamSpace.from_model(model)
    s = AdaLeZOSampler(sampler_cfg(), space, 0)
    numel = torch.tensor([b.numel for b in space.blocks], dtype=torch.float64)
    frac = torch.stack([numel[s.plan(t).blocks].sum() for t in range(1000)]) / numel.sum()
    print(f"opt-125m: N={space.num_layers}, k={s.k}, elements written per step {float(frac.mean()):.3f}× uniform")
    assert space.num_layers == 14 and s.k == 2
    assert float(frac.mean()) <= 0.25


def run_steps(sampler, steps, grads):
    out = []
    for t in steps:
        plan = sampler.plan(t)
        sampler.observe(plan, StepResult(loss=0.0, grad=grads[t], forward_passes=2))
        out.append((plan.seed, plan.blocks.tolist(), plan.weight.tolist(), sampler.rewards.tolist()))
    return out


def test_resume_is_exact_mid_interval():
    """state_dict at step 7 (interval 3: inside a draw's lifetime) continues exactly as the uninterrupted run."""
    space = ParamSpace.from_model(Quadratic([1.0] * 10))
    grads = torch.randn(20, generator=torch.Generator().manual_seed(0)).tolist()
    cfg = sampler_cfg(interval=3, warm_start=True)
    full = run_steps(AdaLeZOSampler(cfg, space, 5), range(20), grads)
    first = AdaLeZOSampler(cfg, space, 5)
    run_steps(first, range(7), grads)
    state = copy.deepcopy(first.state_dict())
    resumed = AdaLeZOSampler(cfg, space, 5)
    resumed.load_state_dict(state)
    assert run_steps(resumed, range(7, 20), grads) == full[7:]
    assert len({tuple(x[1]) for x in full}) > 1  # the draws do change between intervals
