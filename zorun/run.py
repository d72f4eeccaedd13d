"""Run: one configured experiment. setup() -> train() -> cleanup(), with evaluate() in between.

The training loop is plain PyTorch: per step the sampler plans a direction
distribution, the estimator spends its forward passes and writes the update
through the kernels, the sampler observes the result, and the step is logged.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from zorun import kernels
from zorun.errors import ZorunError
from zorun.estimators.schedule import LRSchedule
from zorun.memory import peak_bytes
from zorun.multirun import config_hash
from zorun.models import load_model, load_tokenizer
from zorun.params import ParamSpace
from zorun.registry import build_estimator, build_sampler
from zorun.tasks import Example, build_task
from zorun.tasks.scoring import classification_loss, encode, evaluate_classification, evaluate_generation, lm_loss
from zorun.timing import Clock
from zorun.tracking import Console, MetricsWriter, write_json_atomic
from zorun.tracking.wandb_logger import WandbLogger, start_run_logger

log = logging.getLogger(__name__)


class Run:
    def __init__(self, cfg: DictConfig, out_dir: str):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.status = "running"
        self.error: Optional[str] = None
        self.step = 0
        self.forward_passes = 0
        self.backward_passes = 0  # first-order estimators only
        self.train_loss = float("nan")
        self.results: Dict[str, Any] = {"dev_initial": None, "dev": None, "test": None}
        self.best: Optional[Dict[str, Any]] = None  # the step with the best dev metric, and its test
        self.eval_examples = 0
        self.clock = Clock()
        self.start_time = time.perf_counter()
        self.metrics: Optional[MetricsWriter] = None
        self.console = Console(enabled=bool(cfg.logger.progress))
        self.wandb = WandbLogger()

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = MetricsWriter(self.out_dir / "metrics.jsonl")
        self.wandb = start_run_logger(cfg, self.out_dir)
        with self.clock("setup"):
            self.task = build_task(cfg.task)  # data problems surface before the model loads
            self.tokenizer = load_tokenizer(cfg.model)
            self.model = load_model(cfg.model, cfg.seed)
        self.device = next(self.model.parameters()).device
        self.clock.sync_cuda = self.device.type == "cuda"
        self.space = ParamSpace.from_model(self.model)
        log.info(kernels.select(cfg.kernels, self.space))
        self.sampler = build_sampler(cfg, self.space, cfg.seed)
        self.sampler.open_log(self.out_dir)
        self.estimator = build_estimator(cfg, self.space)
        log.info("model %s: %d trainable tensors, %.2fM parameters on %s", cfg.model.name,
                 len(self.space), self.space.numel / 1e6, self.device)

    # ------------------------------------------------------------------- data
    def batches(self) -> Iterator[List[Example]]:
        """Reshuffled every epoch with a generator seeded by (seed, epoch): reproducible order."""
        train, bs = self.task.train, self.cfg.budget.batch_size
        epoch = 0
        while True:
            gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
            order = torch.randperm(len(train), generator=gen).tolist()
            for start in range(0, max(len(order) - bs, 0) + 1, bs):  # drop the last partial batch
                yield [train[i] for i in order[start : start + bs]]
            epoch += 1

    def make_loss(self, batch: List[Example], differentiable: bool = False):
        """The loss oracle of one step: a no-grad forward on the (already encoded) batch, returning a float.

        differentiable=True (first-order estimators): the forward keeps its
        autograd graph and returns the loss tensor, for one backward pass.
        """
        as_cls = self.task.type == "classification" and self.task.train_as_classification
        enc = encode(self.tokenizer, batch, self.cfg.model.max_length, gold_only=not as_cls).to(self.device)
        fn = classification_loss if as_cls else lm_loss

        if differentiable:
            def loss_with_grad() -> torch.Tensor:
                with torch.enable_grad():
                    return fn(self.model, enc)

            return loss_with_grad

        @torch.no_grad()
        def loss() -> float:
            return float(fn(self.model, enc))

        return loss

    # --------------------------------------------------------------- evaluate
    def evaluate(self, split: str) -> Dict[str, float]:
        examples = self.task.split(split)
        if not examples:
            return {}
        args = (self.model, self.tokenizer, examples, self.cfg.model.max_length,
                self.cfg.budget.eval_batch_size, self.device)
        with self.clock("eval"):
            if self.task.type == "generation":
                result = evaluate_generation(*args, max_new_tokens=self.cfg.task.max_new_tokens)
            else:
                result = evaluate_classification(*args)
        self.eval_examples += len(examples)
        return result

    def select(self, dev: Dict[str, float], test: Optional[Dict[str, float]] = None) -> bool:
        """Model selection on dev only: at a new best dev metric, evaluate test there (unless given)."""
        metric = self.task.metric
        if not dev or (self.best is not None and dev[metric] <= self.best["dev"][metric]):
            return False
        self.best = {"step": self.step, "dev": dev, "test": self.evaluate("test") if test is None else test}
        return True

    # ------------------------------------------------------------------ train
    def train(self) -> None:
        cfg, budget = self.cfg, self.cfg.budget
        schedule = LRSchedule.from_config(cfg.estimator, budget.steps)
        self.results["dev_initial"] = self.evaluate("dev")
        log.info("dev before training: %s", self.results["dev_initial"])
        batches = self.batches()
        losses: List[float] = []
        self.console.start(budget.steps, f"{cfg.estimator.name}/{cfg.sampler.name}")
        try:
            while self.step < budget.steps:
                batch = next(batches)
                loss_fn = self.make_loss(batch, differentiable=self.estimator.differentiable)
                lr = schedule(self.step)
                with self.clock("sampler"):
                    plan = self.sampler.plan(self.step)
                result = self.estimator.step(plan, loss_fn, lr, self.clock)
                self.forward_passes += result.forward_passes
                self.backward_passes += result.backward_passes
                if not result.finite:
                    self.status = "diverged"
                    self.error = f"non-finite loss at step {self.step}; parameters restored; lower estimator.lr or eps"
                    break
                with self.clock("sampler"):
                    self.sampler.observe(plan, result)
                self.step += 1
                losses.append(result.loss)
                self.console.advance(result.loss)
                if self.step % budget.log_every == 0 or self.step == budget.steps:
                    self.log_step(losses[-budget.log_every:], lr, result)
                if budget.eval_every and self.step % budget.eval_every == 0 and self.step < budget.steps:
                    dev = self.evaluate("dev")
                    record = {"step": self.step, "dev": dev, "wall_s": self.wall_s()}
                    if self.select(dev):
                        record["test"] = self.best["test"]
                    self.write_record(record)
                if budget.time_limit_s and self.wall_s() >= budget.time_limit_s:
                    log.info("budget.time_limit_s=%s reached at step %d", budget.time_limit_s, self.step)
                    break
        finally:
            self.console.stop()
        tail = losses[-max(1, min(len(losses), budget.log_every)):]
        self.train_loss = sum(tail) / len(tail) if tail else float("nan")
        # no step taken (budget.steps=0: zero-shot / ICL evaluation): the model is the one just evaluated
        self.results["dev"] = self.evaluate("dev") if self.step else self.results["dev_initial"]
        self.results["test"] = self.evaluate("test")
        self.select(self.results["dev"], self.results["test"])
        if self.status == "running":
            self.status = "completed"

    def wall_s(self) -> float:
        return time.perf_counter() - self.start_time

    def log_step(self, recent: List[float], lr: float, result) -> None:
        record = {"step": self.step, "loss": sum(recent) / len(recent), "lr": lr, "grad": result.grad,
                  "wall_s": self.wall_s(), "forward_passes": self.forward_passes}
        record.update(self.sampler.log_record())
        self.write_record(record)

    def write_record(self, record: Dict[str, Any]) -> None:
        self.metrics.write(record)
        self.wandb.log(record)

    # ---------------------------------------------------------------- cleanup
    def fail(self, status: str, message: str) -> None:
        self.status, self.error = status, message

    def summary(self) -> Dict[str, Any]:
        wall = self.wall_s()
        self.clock.add_other(wall)
        device = getattr(self, "device", torch.device("cpu"))
        eval_s = self.clock.totals["eval"]
        out = {
            "status": self.status,
            "model": self.cfg.model.name,
            "task": self.cfg.task.name,
            "estimator": self.cfg.estimator.name,
            "sampler": self.cfg.sampler.name,
            "seed": self.cfg.seed,
            "steps": self.step,
            "forward_passes": self.forward_passes,
            "backward_passes": self.backward_passes,
            "train_loss": self.train_loss,
            "dev_initial": self.results["dev_initial"],
            "dev": self.results["dev"],
            "test": self.results["test"],
            "best": self.best,
            "wall_s": wall,
            "peak_mem_bytes": peak_bytes(device),
            "time_s": dict(self.clock.totals),
            "eval_examples_per_s": self.eval_examples / eval_s if eval_s > 0 else None,
            "state_bytes": self.estimator.state_bytes if hasattr(self, "estimator") else 0,
            "config_hash": config_hash(self.cfg),
        }
        if self.error:
            out["error"] = self.error
        return out

    def cleanup(self) -> Dict[str, Any]:
        try:
            summary = self.summary()
            write_json_atomic(self.out_dir / "summary.json", summary)
            if self.metrics is not None:
                self.metrics.close()
            if getattr(self, "sampler", None) is not None:
                self.sampler.close()
            self.wandb.summary(summary)
            self.console.summary(summary, str(self.out_dir))
        finally:
            self.wandb.finish(exit_code=0 if self.status == "completed" else 1)
        return summary


def execute(cfg: DictConfig) -> Dict[str, Any]:
    """Hydra's task function: run, always write summary.json, map failures to exit codes."""
    from hydra.core.hydra_config import HydraConfig

    run = Run(cfg, HydraConfig.get().runtime.output_dir)
    exit_code = 0
    try:
        run.setup()
        run.train()
    except ZorunError as err:
        run.fail("failed", str(err))
        print(f"zorun: error: {err}", file=sys.stderr)
        exit_code = 2
    except KeyboardInterrupt:
        run.fail("stopped", f"interrupted at step {run.step}")
        exit_code = 130
    except Exception as err:  # a bug: keep the traceback, but never lose the summary
        run.fail("failed", f"{type(err).__name__}: {err}")
        run.cleanup()
        raise
    summary = run.cleanup()
    if summary["status"] == "diverged":
        print(f"zorun: error: {summary['error']}", file=sys.stderr)
        exit_code = 3
    if exit_code:
        sys.exit(exit_code)
    return summary
