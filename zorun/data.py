"""What a step sees: the order of the training batches, and the loss oracle an estimator calls on one.

The order is a function of (seed, position) alone, so a resumed run goes on
with it without replaying the data. The oracle is the same forward for a
run, for PertNN meta-training (several tasks through one model) and for the
memory probes; under torchrun each rank runs its share of the batch and the
ranks average the loss (zorun.distributed).
"""

from __future__ import annotations

from typing import Iterator, List, Optional

import torch

from zorun.distributed import DataParallel
from zorun.stack import Stack
from zorun.tasks import Example, Task
from zorun.tasks.scoring import classification_loss, encode, lm_loss


class Data:
    """One task's training batches (budget.batch_size each) and the loss on them at the stack's current θ."""

    def __init__(self, stack: Stack, task: Task, dp: Optional[DataParallel] = None):
        self.stack, self.task = stack, task
        self.dp = dp or DataParallel()
        self.batch_size = stack.cfg.budget.batch_size

    def steps_per_epoch(self) -> int:
        """Batches in one pass over the training set (the last partial batch is dropped, see batches())."""
        return max(len(self.task.train) - self.batch_size, 0) // self.batch_size + 1

    def total_steps(self) -> int:
        """budget.steps, or budget.epochs whole passes over the training set."""
        budget = self.stack.cfg.budget
        return budget.epochs * self.steps_per_epoch() if budget.epochs else budget.steps

    def batches(self, start: int = 0) -> Iterator[List[Example]]:
        """Reshuffled every epoch with a generator seeded by (seed, epoch): reproducible order, and
        resumable at any position (`start` batches already consumed) without replaying the data."""
        train, bs = self.task.train, self.batch_size
        starts = range(0, max(len(train) - bs, 0) + 1, bs)  # drop the last partial batch
        epoch, skip = divmod(start, len(starts))
        while True:
            gen = torch.Generator().manual_seed(self.stack.cfg.seed * 100_003 + epoch)
            order = torch.randperm(len(train), generator=gen).tolist()
            for begin in starts[skip:]:
                yield [train[i] for i in order[begin : begin + bs]]
            skip = 0
            epoch += 1

    def make_loss(self, batch: List[Example], differentiable: bool = False):
        """The loss oracle of one step: a no-grad forward on the (already encoded) batch, returning a float.

        differentiable=True (first-order estimators): the forward keeps its
        autograd graph and returns the loss tensor, for one backward pass.
        """
        forward, weight = self.local_forward(batch)

        if differentiable:
            def loss_with_grad() -> torch.Tensor:
                with torch.enable_grad():
                    return forward()

            return loss_with_grad

        @torch.no_grad()
        def loss() -> float:
            return self.dp.mean(float(forward()), weight)  # data-parallel: the global batch's mean

        return loss

    def local_forward(self, batch: List[Example]):
        """(one forward on this rank's share of the batch -> the loss tensor, what that loss averages over).

        The weight is the number of examples for the classification loss and of
        answer tokens for the LM loss, so that weighted slice means combine into
        exactly the full batch's mean.
        """
        stack, task = self.stack, self.task
        as_cls = task.trains_on_candidates
        local = self.dp.shard(batch) if self.dp.enabled else batch
        enc = encode(stack.tokenizer, local, stack.cfg.model.max_length, gold_only=not as_cls).to(stack.device)
        fn = classification_loss if as_cls else lm_loss
        weight = enc.num_examples if as_cls else int(enc.answer_mask[:, 1:].sum())
        return (lambda: fn(stack.model, enc)), weight

    def true_gradient(self, batch: List[Example]) -> List[torch.Tensor]:
        """∇L of the batch at the current θ by one backward pass, per block (a diagnostic; costs activations)."""
        loss = self.make_loss(batch, differentiable=True)()
        tensors = [b.tensor for b in self.stack.space.blocks]
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)  # a block the loss never reads: ∇ = 0
        return [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]
