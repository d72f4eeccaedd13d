"""sampler=ldsd: the REINFORCE estimate of ∇_μ E[f] is unbiased, μ learns the gradient direction (and the
public code's shared-seed regeneration does not), the CLI runs it with correct accounting, and its state
replays, undoes and resumes exactly."""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from conftest import read_summary, run_cli
from test_checkpoint import nan_at
from test_resume import run_here
from zorun import kernels
from zorun.checkpoint import PARAMS
from zorun.estimators.base import ZOEstimatorConfig
from zorun.estimators.mezo import MeZO
from zorun.params import ParamSpace
from zorun.plan import Plan, mix_seed
from zorun.replay import replay, run_replay
from zorun.samplers.ldsd import LDSDSampler, LDSDSamplerConfig, loo_baselines
from zorun.timing import Clock
from zorun.trajectory import ReplayError, decode_plan, encode_plan

EPS, SIGMA, LR_MU, K = 0.1, 1.0, 0.05, 5


@pytest.fixture(autouse=True)
def torch_kernels():
    kernels.select("torch")
    yield
    kernels.select("auto")


class Quadratic:
    """f(θ) = ½ θᵀAθ + bᵀθ over the concatenated blocks; ∇f(θ) = Aθ + b."""

    def __init__(self, shapes, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.space = ParamSpace([(f"layers.{i}.weight", torch.nn.Parameter(torch.randn(s, generator=gen)))
                                 for i, s in enumerate(shapes)])
        d = self.space.numel
        q = torch.randn(d, d, generator=gen, dtype=torch.float64) / math.sqrt(d)
        self.a = q @ q.T + 0.5 * torch.eye(d, dtype=torch.float64)
        self.b = torch.randn(d, generator=gen, dtype=torch.float64)
        self.theta0 = self.flat()

    def flat(self) -> torch.Tensor:
        return torch.cat([b.tensor.detach().reshape(-1).double() for b in self.space.blocks])

    def __call__(self) -> float:
        x = self.flat()
        return float(0.5 * x @ self.a @ x + self.b @ x)

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        return self.a @ x + self.b

    def reset(self) -> None:
        with torch.no_grad():
            start = 0
            for blk in self.space.blocks:
                n = blk.numel
                blk.tensor.copy_(self.theta0[start : start + n].view_as(blk.tensor))
                start += n


def make(f: Quadratic, **over):
    cfg = OmegaConf.structured(LDSDSamplerConfig(**{"k": K, "sigma": SIGMA, "lr_mu": LR_MU, **over}))
    est = MeZO(OmegaConf.structured(ZOEstimatorConfig(eps=EPS)), f.space)
    return LDSDSampler(cfg, f.space, seed=3), est


def flat_mean(sampler: LDSDSampler) -> torch.Tensor:
    return torch.cat([m.reshape(-1).double() for m in sampler.mean])


def set_mean(sampler: LDSDSampler, values: torch.Tensor) -> None:
    start = 0
    for m in sampler.mean:
        m.copy_(values[start : start + m.numel()].view_as(m))
        start += m.numel()


def test_loo_baseline():
    assert loo_baselines([1.0, 2.0, 6.0]) == [1.0 - 4.0, 2.0 - 3.5, 6.0 - 1.5]


def test_policy_gradient_is_unbiased_on_a_quadratic():
    """E[g_μ] = ∇_μ E[f(θ + ε(μ + σζ))] = ε·∇f(θ + εμ) for a quadratic, whatever μ and σ.

    M = 1000 steps of the real path (plan -> the estimator's search and probe -> REINFORCE through the
    kernels), K = 3, σ = 0.5, d = 3, θ and μ reset before each; g_μ = −Δμ/η_μ. Every coordinate's Monte
    Carlo mean must lie within 4.5 standard errors (sample std / √M) of the analytic value: a correct
    estimator fails with probability ~7e-6 per coordinate. The standard errors are below 6% of ‖∇‖,
    so a wrong power of σ (a factor 2) or of ε fails by far.
    """
    f = Quadratic([(3,)])
    sampler, est = make(f, k=3, sigma=0.5)
    mu0 = torch.tensor([0.6, -0.4, 1.0], dtype=torch.float64)
    truth = EPS * f.grad(f.theta0 + EPS * mu0)
    m, samples = 1000, []
    for step in range(m):
        f.reset()
        set_mean(sampler, mu0)
        plan = sampler.plan(step)
        sampler.learn(plan, est.step(plan, f, 0.0, Clock()))
        samples.append(-(flat_mean(sampler) - mu0) / LR_MU)
    g = torch.stack(samples)
    se = g.std(dim=0) / math.sqrt(m)
    z = (g.mean(dim=0) - truth) / se
    assert z.abs().max() < 4.5, f"z-scores {z.tolist()}, mean {g.mean(0).tolist()}, truth {truth.tolist()}"
    assert se.max() < 0.06 * truth.norm(), (se.tolist(), truth.tolist())


class SharedSeedLDSD(LDSDSampler):
    """The public code's defect: the μ step regenerates its K directions from one generator seeded once with
    the chosen candidate's seed, drawing them in sequence, instead of each from its own seed s_i."""

    def learn(self, plan, result):
        chosen = plan.candidate(result.extras["chosen"]).seed
        shared = [Plan(mix_seed(chosen, j), plan.blocks) for j in range(plan.candidates)]
        self.reinforce(shared, result.extras["candidate_losses"])


def cosine_trace(cls, steps=240):
    """cos(μ, −∇f) measured by the sampler's own diagnostic, θ held fixed (lr = 0) so ∇f is fixed."""
    f = Quadratic([(30,), (20,)], seed=1)
    _, est = make(f)
    sampler = cls(OmegaConf.structured(LDSDSamplerConfig(k=K, sigma=SIGMA, lr_mu=LR_MU, cosine_every=1)),
                  f.space, seed=5)
    g = f.grad(f.theta0).float()
    grads = [g[:30], g[30:]]
    trace = []
    for step in range(steps):
        plan = sampler.plan(step)
        sampler.observe_gradient(grads)
        trace.append(sampler.record["cos"])
        sampler.observe(plan, est.step(plan, f, 0.0, Clock()))
    return trace


def test_mu_aligns_with_the_negative_gradient_and_shared_seed_regeneration_does_not():
    """d = 50, K = 5. Per step E[Δμ] = −η_μ·ε·∇f and the noise is about √(d/K) times that, so after T steps
    cos ≈ 1/√(1 + d/(K·T)): 0.98 at T = 240 (0.7 at T = 10). With the shared seed E[Δμ] = 0: μ is a random walk
    and |cos| is of order 1/√d = 0.14 (bound 0.45, over 3 standard deviations)."""
    good = cosine_trace(LDSDSampler)
    assert good[0] is None  # μ_0 = 0: no direction yet
    assert 0.3 < good[10] < good[60] < good[-1] and good[-1] > 0.9, good[::20]
    bad = cosine_trace(SharedSeedLDSD)
    assert max(abs(c) for c in bad[60:]) < 0.45, bad[::20]


def test_mean_fraction_and_random_init():
    f = Quadratic([(3,), (4,), (5,), (6,)])
    sampler, _ = make(f, mean_fraction=0.5, mu_init="random")
    has = [m is not None for m in sampler.mean]
    assert sum(has) == 2 and sampler.mean_blocks.tolist() == [i for i, h in enumerate(has) if h]
    assert sampler.state_bytes == 4 * sum(f.space.blocks[i].numel for i in sampler.mean_blocks.tolist())
    for m in sampler.mean:
        if m is not None:
            assert abs(float(m.norm()) - 1.0) < 1e-6
    again, _ = make(f, mean_fraction=0.5, mu_init="random")  # the subset and μ_0 come from the run seed
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(sampler.mean, again.mean))


def test_the_log_holds_no_mean_and_replay_needs_the_sampler():
    f = Quadratic([(4,), (2,)])
    sampler, est = make(f)
    plan = sampler.plan(0)
    record = json.loads(json.dumps(encode_plan(plan, 2)))
    assert record["mean"] == "sampler" and record["candidates"] == K
    assert decode_plan(record, 2).mean is None
    losses = [1.0] * K + [1.5, 0.5]
    record.update(step=0, lr=0.0, losses=losses, grad=(1.5 - 0.5) / (2 * EPS))
    with pytest.raises(ReplayError, match="sampler-held mean"):
        replay(est, [record], 2, 0, 1, Clock())
    assert replay(est, [record], 2, 0, 1, Clock(), sampler) == 1


def test_cli_multirun_mezo_and_zo_adam_full_ft_with_accounting_and_exact_replay(tmp_path):
    """The tiny model, full fine-tuning: forward_passes = steps·(K + 2), μ counted in state_bytes, the per-step
    log, the cosine at the logged steps, and zorun-replay (sampler state rebuilt) equal to the checkpoint."""
    steps, k = 6, 3
    proc = run_cli("-m", "sampler=ldsd", "estimator=mezo,zo-adam", f"sampler.k={k}", "sampler.cosine_every=3",
                   "budget=smoke", f"budget.steps={steps}", "budget.batch_size=2", "budget.log_every=3",
                   f"budget.checkpoint_every={steps}", "task.num_train=16", "task.num_dev=4", "task.num_test=4",
                   "logger=none", f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=${estimator.name}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for est, copies in (("mezo", 1), ("zo-adam", 3)):  # μ (+ m, v)
        run_dir = tmp_path / est
        summary = read_summary(run_dir)
        assert summary["status"] == "completed" and summary["forward_passes"] == steps * (k + 2)
        params = sum(t.numel() for t in load_file(str(run_dir / "checkpoints" / f"step-{steps:08d}" / PARAMS)).values())
        assert summary["state_bytes"] == copies * 4 * params
        lines = [json.loads(l) for l in (run_dir / "ldsd.jsonl").read_text().splitlines()]
        assert [r["step"] for r in lines] == list(range(steps))
        assert all(len(r["losses"]) == k and r["losses"][r["chosen"]] == min(r["losses"]) for r in lines)
        logged = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if "loss" in l]
        assert [r["step"] for r in logged] == [3, 6] and all(-1 <= r["cos"] <= 1 and r["mu_norm"] > 0 for r in logged)
        assert run_replay(run_dir, None, None, None, 0.0) == 0


@pytest.mark.parametrize("every", [0, 2], ids=["from-base-model", "from-checkpoint"])
def test_a_skipped_ldsd_step_restores_theta_and_mu_bit_for_bit(tmp_path, every):
    """The exact undo replays μ's REINFORCE steps as well (from μ_0, or from the checkpoint's μ)."""
    snapshots = {}

    def hook(run):
        nan_at({5})(run)
        inner = run.train_step

        def train_step(*args):
            snapshots.setdefault(run.step, (run.stack.space.snapshot(), [m.clone() for m in run.stack.sampler.mean]))
            return inner(*args)

        run.train_step = train_step

    _, summary = run_here(tmp_path, "sampler=ldsd", "sampler.k=3", "budget.steps=7",
                          f"budget.checkpoint_every={every}", hook=hook)
    assert summary["status"] == "completed" and summary["skipped_steps"] == 1
    for before, after in zip(snapshots[5], snapshots[6]):
        assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[4][1], snapshots[5][1]))  # μ does move


BAD = [
    (["sampler=ldsd", "estimator=lozo"], "estimator=lozo does not, use one of mezo"),
    (["sampler=ldsd", "estimator.one_sided=true"], "set estimator.one_sided=false"),
    (["sampler=ldsd", "estimator.q=2"], "set estimator.q=1"),
    (["sampler=ldsd", "sampler.k=1"], "sampler.k=1 is out of range"),
    (["sampler=ldsd", "sampler.mu_init=ones"], "sampler.mu_init"),
]


@pytest.mark.parametrize("argv,expect", BAD, ids=[a[-1] for a, _ in BAD])
def test_bad_ldsd_config_is_one_line_exit_2(argv, expect, capsys):
    from zorun.commands import cli as zcli

    with pytest.raises(SystemExit) as exc:
        zcli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("zorun: error: ") and expect in err, err
