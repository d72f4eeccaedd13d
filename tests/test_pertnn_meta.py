"""PertNN meta-training: the single-backward meta-gradient against autograd, and a short meta-training run."""

from __future__ import annotations

import torch
from conftest import tiny_llama
from omegaconf import OmegaConf
from torch.func import functional_call

from zorun import kernels
from zorun.kernels import z_chunks
from zorun.params import ParamSpace
from zorun.samplers.pertnn import PertNNSampler, normalisation
from zorun.samplers.pertnn_meta import History, MetaLearner

SAMPLER = dict(name="pertnn", checkpoint=None, rename=[], normalize=True, embed_tokens=15, batch_size=2,
               log_every=1, init_seed=0)


def full_z(param: torch.Tensor, seed: int, block: int) -> torch.Tensor:
    """z_b as the torch kernels draw it (the chunk buffer is reused, so each chunk is copied)."""
    return torch.cat([z.clone() for z, _ in z_chunks(param, seed, block)]).view_as(param)


def test_single_backward_meta_gradient_equals_autograd_through_the_update():
    """∂L(θ − η·c·f·σ·z)/∂ω: the identity with one backward at θ' against autograd through
    torch.func.functional_call of the functional one-step update, on a tiny Llama (tied embeddings)."""
    kernels.select("torch")
    model = tiny_llama(hidden=16, layers=1, vocab=64, seed=3)
    space = ParamSpace.from_model(model)
    sampler = PertNNSampler(OmegaConf.create(SAMPLER), space, seed=0)
    ids = torch.randint(64, (2, 10), generator=torch.Generator().manual_seed(1))

    @torch.no_grad()
    def loss() -> float:
        return float(model(input_ids=ids, labels=ids).loss)

    def loss_grad() -> torch.Tensor:
        return model(input_ids=ids, labels=ids).loss

    eps, eta, seed = 1e-3, 0.05, 12345  # a large η so that θ' is far from θ and the gradient is not tiny
    history = History(torch.tensor([0.7, 0.9], dtype=torch.float64), torch.rand(len(space)) + 0.5)
    theta = {b.name: b.tensor.detach().clone() for b in space.blocks}
    x = sampler.features(history.losses, history.sigma)
    learner = MetaLearner(sampler, eps=eps, eta=eta, lr=0.0)
    step = learner.meta_gradient(seed, History(history.losses, history.sigma), loss, loss_grad)
    identity = {k: p.grad.clone() for k, p in sampler.nets.named_parameters()}
    for b in space.blocks:  # θ is back where it was (to float rounding)
        torch.testing.assert_close(b.tensor.detach(), theta[b.name], rtol=0, atol=1e-6)

    sampler.nets.zero_grad()
    sigma = sampler.nets(x)
    f = normalisation(sigma, sampler.sizes)
    c = (step.loss_plus - step.loss_minus) / (2 * eps)
    moved = {b.name: theta[b.name] - eta * c * f * sigma[b.id] * full_z(b.tensor, seed, b.id) for b in space.blocks}
    meta = functional_call(model, moved, kwargs={"input_ids": ids, "labels": ids}).loss
    meta.backward()
    assert abs(float(meta.detach()) - step.meta_loss) < 1e-5
    for k, p in sampler.nets.named_parameters():
        assert p.grad.abs().max() > 1e-6, f"{k}: the meta-gradient vanished, the comparison would be empty"
        torch.testing.assert_close(identity[k], p.grad, rtol=1e-5, atol=1e-5 * float(p.grad.abs().max()))  # measured: <= 2e-7 of the max


def test_meta_training_lowers_the_meta_loss_of_the_networks(tmp_path, compose):
    """A short meta-training run (tiny model, synthetic task, 16 meta-steps with a restart): at the base
    weights, on 4 fixed batches and 16 fixed seeds, the trained networks' one-step-ahead meta-loss is lower
    than the initial networks' (paired; deterministic on CPU). A wrong-signed meta-gradient raises it."""
    from zorun.metatrain import MetaTrainer
    from zorun.recovery import load_base_params

    cfg = compose("task.num_train=64", "task.num_dev=8", "task.num_test=8", "metatrain.epochs=2",
                  "metatrain.epochs_per_restart=1", "metatrain.eta_meta=2e-4", "metatrain.lr_mlp=3",
                  "estimator.lr=1e-3", name="metatrain")
    trainer = MetaTrainer(cfg, str(tmp_path))
    trainer.setup()
    stack, data = trainer.stack, trainer.data[0]
    batches = [next(data.batches(start=i)) for i in range(4)]

    def meta_losses() -> torch.Tensor:
        probe = MetaLearner(stack.sampler, cfg.metatrain.eps, cfg.metatrain.eta_meta, lr=0.0)
        return torch.tensor([probe.meta_gradient(1000 + i, History.start(len(stack.space)), data.make_loss(b),
                                                 data.make_loss(b, differentiable=True)).meta_loss
                             for i, b in enumerate(batches * 4)], dtype=torch.float64)

    before = meta_losses()
    trainer.train()
    assert trainer.step == 16 and (tmp_path / "pertnn.safetensors").is_file()
    load_base_params(cfg, stack.space)
    gain = before - meta_losses()
    assert gain.mean() > 0 and gain.mean() / gain.std() * 4 > 2, gain  # paired t over 16 pairs
