"""Run: one configured experiment, read top to bottom: setup() -> train() -> cleanup(), evaluating in between.

The training loop is plain PyTorch: per step the sampler plans a direction
distribution, the estimator spends its forward passes and writes the update
through the kernels, the sampler observes the result, and the step is logged
(metrics.jsonl, and trajectory.jsonl with what replays the update). What the
recipe stands on lives beside it: the model and what trains it in
:mod:`zorun.stack`, batch order and the loss oracle in :mod:`zorun.data`,
checkpoints, resume and the exact undo of a non-finite step in
:mod:`zorun.recovery` (see docs/checkpoints.md), evaluation and model
selection in :mod:`zorun.evaluation`.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig

from zorun.checkpoint import Checkpoints, truncate_logs
from zorun.data import Data
from zorun.distributed import DataParallel
from zorun.errors import ZorunError
from zorun.estimators.schedule import LRSchedule
from zorun.evaluation import chosen, evaluate, evaluates_at
from zorun.identity import config_hash
from zorun.export import MODEL_DIR, save_model
from zorun.models import load_tokenizer
from zorun.models.adapters import save_adapter
from zorun.norm_guard import NormGuard
from zorun.peaks import forward_peak, peak_bytes, peaks, step_over_forward
from zorun.preemption import StopSignals
from zorun.recovery import resume, save_checkpoint, undo_nonfinite, within_bounds
from zorun.stack import Stack, check_data_parallel
from zorun.tasks import Example, Task, build_task
from zorun.timing import Clock
from zorun.tracking import Console, MetricsWriter, write_json_atomic
from zorun.tracking.files import check_writable
from zorun.trajectory import NAME as TRAJECTORY
from zorun.trajectory import RecordingLoss, TrajectoryWriter
from zorun.tracking.wandb_logger import WandbLogger, start_run_logger

log = logging.getLogger(__name__)


class Run:
    def __init__(self, cfg: DictConfig, out_dir: str, signals: Optional[StopSignals] = None):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.dp = DataParallel.from_env()  # under torchrun: this rank; rank 0 alone writes to out_dir
        self.scratch: Optional[Path] = None  # other ranks: a private directory for their trajectory log
        self.task: Optional[Task] = None
        self.stack: Optional[Stack] = None  # the model, its trainable blocks, the sampler and the estimator
        self.data: Optional[Data] = None  # the task's batch order and the loss oracle on the stack
        self.status = "running"
        self.error: Optional[str] = None
        self.step = 0  # steps taken, skipped ones included; the next step's index
        self.batches_done = 0  # the data-order position
        self.forward_passes = 0
        self.backward_passes = 0  # first-order estimators only
        self.skipped_steps = 0  # undone after a non-finite loss
        self.consecutive_skips = 0
        self.losses: List[float] = []  # training losses; a checkpoint keeps the last log_every
        self.train_loss = float("nan")
        self.results: Dict[str, Any] = {"dev_initial": None, "dev": None, "test": None}
        self.selected: Optional[Dict[str, Any]] = None  # the step budget.select chooses on dev, and its test
        self.eval_examples = 0
        self.clock = Clock()
        self.start_time = time.perf_counter()
        self.metrics: Optional[MetricsWriter] = None
        self.console = Console(enabled=bool(cfg.logger.progress) and self.dp.is_main)
        self.wandb = WandbLogger()
        self.signals = signals or StopSignals()  # entered by the zorun command; never set in library use
        self.checkpoints = Checkpoints(self.out_dir / "checkpoints", cfg.budget.keep_checkpoints)
        self.saved_step: Optional[int] = None  # the step of this attempt's newest checkpoint
        self.guard: Optional[NormGuard] = None  # the parameter-norm guard, set when training starts
        self.resumed_from: Optional[int] = None
        self.trajectory: Optional[TrajectoryWriter] = None
        self.memory: Optional[Dict[str, Dict[str, float]]] = None  # peaks of the attempt's first step, per device
        self.peak_before: Dict[str, int] = {}  # peaks per device before the first step's measurement reset them

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Outputs first (a directory that cannot be written fails now, not at the first save), then
        the model, then the newest checkpoint of the directory, if any: relaunching a run resumes it."""
        cfg = self.cfg
        if self.dp.is_main:
            check_writable(self.out_dir)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.checkpoints.discard_partial()
        if self.dp.enabled:
            check_data_parallel(cfg, self.dp.world)
        latest = self.checkpoints.latest()  # every rank resumes from rank 0's checkpoints (a shared directory)
        if latest is None and cfg.resume:
            raise ZorunError(f"resume={cfg.resume}: {self.checkpoints.root} holds no checkpoint (budget.checkpoint_every=0 "
                             f"and never stopped by a signal?); start the run afresh without resume=")
        if self.dp.is_main:
            self.metrics = MetricsWriter(self.out_dir / "metrics.jsonl")
            self.wandb = start_run_logger(cfg, self.out_dir)
        with self.clock("setup"):
            self.task = build_task(cfg.task)  # data problems surface before the model loads
            self.stack = Stack.load(cfg, load_tokenizer(cfg.model))
            self.clock.sync_cuda = self.stack.device.type == "cuda"
            self.stack.add_trainers()
            self.data = Data(self.stack, self.task, self.dp)
        if latest is not None:  # every check of the checkpoint before the logs are cut back to it
            with self.clock("checkpoint"):
                resume(self, latest)
        space = self.stack.space
        header = {"num_blocks": len(space), "estimator": cfg.estimator.name, "sampler": cfg.sampler.name}
        if self.dp.is_main:
            self.stack.sampler.open_log(self.out_dir)
            # back to their sizes at the checkpoint (a fresh start empties them); writes append at the new end
            truncate_logs(self.log_paths(), latest.meta["logs"] if latest else {})
            self.trajectory = TrajectoryWriter(self.out_dir / TRAJECTORY, header)
        else:  # the same records, kept privately: an exact undo of a non-finite step replays them
            self.scratch = Path(tempfile.mkdtemp(prefix=f"zorun-rank{self.dp.rank}-"))
            self.trajectory = TrajectoryWriter(self.scratch / TRAJECTORY, header)
        log.info("model %s: %d trainable tensors, %.2fM parameters on %s%s", cfg.model.name,
                 len(space), space.numel / 1e6, self.stack.device,
                 f"; data-parallel over {self.dp.world} ranks" if self.dp.enabled else "")

    def log_paths(self) -> List[Path]:
        """The per-step logs this run appends to; a checkpoint records their sizes."""
        paths = [self.metrics.path, self.out_dir / TRAJECTORY]
        sampler_log = getattr(self.stack.sampler, "log", None)  # a sampler's own per-step log (adalezo.jsonl)
        if isinstance(sampler_log, MetricsWriter):
            paths.append(sampler_log.path)
        return paths

    # --------------------------------------------------------------- evaluate
    def evaluate(self, split: str) -> Dict[str, float]:
        """The split's metrics; dev also gets `objective`, the training loss there (what budget.select=dev_loss ranks)."""
        examples = self.task.split(split)[: self.cfg.budget.max_eval_examples or None]
        if not examples:
            return {}
        log.info("evaluating %s: %d examples", split, len(examples))
        with self.clock("eval"), self.console.evaluation(split, len(examples)) as progress:
            result = evaluate(self.stack, self.task, examples, objective=split == "dev", progress=progress)
        self.eval_examples += len(examples)
        if split == "dev":
            self.console.dev(self.task.metric, result[self.task.metric])
        return result

    def select(self, dev: Dict[str, float], test: Optional[Dict[str, float]] = None, final: bool = False) -> bool:
        """Model selection on dev only, by budget.select (zorun.evaluation.chosen): at a newly selected step,
        evaluate test there (unless given)."""
        rule = getattr(self.cfg.budget.select, "value", self.cfg.budget.select)  # Hydra's Enum member, or YAML's str
        if not dev or not chosen(rule, dev, self.selected, self.task.metric, final):
            return False
        self.selected = {"by": rule, "step": self.step, "dev": dev,
                         "test": self.evaluate("test") if test is None else test}
        return True

    # ------------------------------------------------------------------ train
    def train(self) -> None:
        cfg, budget = self.cfg, self.cfg.budget
        total, per_epoch = self.data.total_steps(), self.data.steps_per_epoch()
        if budget.epochs:
            log.info("budget.epochs=%d: %d steps (%d per epoch), dev at each epoch's end", budget.epochs, total,
                     per_epoch)
        schedule = LRSchedule.from_config(cfg.estimator, total)
        if self.results["dev_initial"] is None and self.signals.received is None:
            self.results["dev_initial"] = self.evaluate("dev")
            log.info("dev before training: %s", self.results["dev_initial"])
        batches = self.data.batches(self.batches_done)
        self.guard = NormGuard(self.stack.space)
        self.console.start(total, f"{cfg.estimator.name}/{cfg.sampler.name}", completed=self.step)
        try:
            while self.step < total and not self.dp.any(self.signals.received is not None):
                lr = schedule(self.step)
                proceed, result = self.train_step(next(batches), lr)
                self.console.advance(result.loss)
                if self.step % budget.log_every == 0 or self.step == total:
                    self.log_step(self.losses[-budget.log_every:], lr, result)
                if not proceed or (self.step % budget.log_every == 0 and not within_bounds(self)):
                    break
                if evaluates_at(budget, self.step, per_epoch, total):
                    dev = self.evaluate("dev")
                    record = {"step": self.step, "dev": dev, "wall_s": self.wall_s(), "train_s": self.train_s()}
                    if self.select(dev):
                        record["test"] = self.selected["test"]
                    self.write_record(record)
                if budget.checkpoint_every and self.step % budget.checkpoint_every == 0 and not save_checkpoint(self):
                    break
                if budget.time_limit_s and self.dp.any(self.wall_s() >= budget.time_limit_s):
                    log.info("budget.time_limit_s=%s reached at step %d", budget.time_limit_s, self.step)
                    break
        finally:
            self.console.stop()
        tail = self.losses[-max(1, min(len(self.losses), budget.log_every)):]
        self.train_loss = sum(tail) / len(tail) if tail else float("nan")
        if self.signals.received is not None and self.status == "running":
            self.fail("stopped", f"stopped by {self.signals.name} at step {self.step}")
            if budget.checkpoint_on_stop:
                save_checkpoint(self)  # whatever budget.checkpoint_every: the work so far must survive
            return
        if budget.checkpoint_every:
            save_checkpoint(self)  # the final (or, diverged, the restored) parameters; a relaunch re-evaluates
        # no step taken (budget.steps=0: zero-shot / ICL evaluation): the model is the one just evaluated
        self.results["dev"] = self.evaluate("dev") if self.step else self.results["dev_initial"]
        self.results["test"] = self.evaluate("test")
        self.select(self.results["dev"], self.results["test"], final=True)
        if self.status == "running":
            self.status = "completed"
            if self.dp.is_main:
                self.save_outputs()

    def save_outputs(self) -> None:
        """The trained model in the forms users load, each also a W&B artifact: adapter/ (a peft model, for
        PeftModel.from_pretrained), model/ (full-parameter with budget.save_model, a merged LoRA with
        budget.save_merged; uploaded with logger.log_model). The merge changes the model: it comes last."""
        budget = self.cfg.budget
        with self.clock("checkpoint"):
            adapter = save_adapter(self.stack.model, self.out_dir)
            model = None
            if budget.save_merged or (budget.save_model and adapter is None):
                model = save_model(self.stack.model, self.stack.tokenizer, self.out_dir / MODEL_DIR)
                log.info("model %s (AutoModelForCausalLM.from_pretrained loads it)", model)
        if adapter is not None:
            self.wandb.log_folder(adapter, "adapter")
        if model is not None and self.cfg.logger.get("log_model"):
            self.wandb.log_folder(model, "model")

    def train_step(self, batch: List[Example], lr: float):
        """One step on one batch: (whether to go on, the estimator's result). A non-finite loss is undone."""
        stack = self.stack
        self.batches_done += 1
        loss_fn = RecordingLoss(self.data.make_loss(batch, differentiable=stack.estimator.differentiable))
        with self.clock("sampler"):
            plan = stack.sampler.plan(self.step)
        if stack.sampler.wants_gradient(self.step):
            with self.clock("sampler"):  # a diagnostic of the sampler's, counted as its time
                stack.sampler.observe_gradient(self.data.true_gradient(batch))
        probe = self.memory is None  # once per attempt: the step's peaks against one inference forward's
        if probe:
            self.peak_before, forward = forward_peak(self.data.local_forward(batch)[0], stack.devices())
        result = stack.estimator.step(plan, loss_fn, lr, self.clock)
        if probe:
            self.memory = step_over_forward(peaks(stack.devices()), forward)
        self.forward_passes += result.forward_passes
        self.backward_passes += result.backward_passes
        self.trajectory.step(self.step, plan, lr, loss_fn.values, result.grad, skip=not result.finite)
        if result.finite:
            with self.clock("sampler"):
                stack.sampler.observe(plan, result)
            self.consecutive_skips = 0
            self.losses.append(result.loss)
            proceed = True
        else:
            proceed = undo_nonfinite(self, loss_fn.values)
        self.step += 1
        return proceed, result

    def wall_s(self) -> float:
        return time.perf_counter() - self.start_time

    def train_s(self) -> float:
        """Seconds spent training so far: the wall-clock without set-up, evaluation and checkpoints.

        Time-to-target comparisons (zorun-report --target) use it so that the
        evaluation schedule does not count as training time.
        """
        spent = sum(self.clock.totals[p] for p in ("setup", "eval", "checkpoint"))
        return max(0.0, self.wall_s() - spent)

    def log_step(self, recent: List[float], lr: float, result) -> None:
        if not recent:
            return
        record = {"step": self.step, "loss": sum(recent) / len(recent), "lr": lr, "grad": result.grad,
                  "wall_s": self.wall_s(), "train_s": self.train_s(), "forward_passes": self.forward_passes}
        record.update(self.stack.sampler.log_record())
        self.write_record(record)

    def write_record(self, record: Dict[str, Any]) -> None:
        if self.metrics is not None:  # rank 0 only
            self.metrics.write(record)
        self.wandb.log(record)

    # ---------------------------------------------------------------- cleanup
    def fail(self, status: str, message: str) -> None:
        self.status, self.error = status, message

    def summary(self) -> Dict[str, Any]:
        wall = self.wall_s()
        self.clock.add_other(wall)
        stack = self.stack
        device = stack.device if stack is not None else torch.device("cpu")
        eval_s = self.clock.totals["eval"]
        out = {
            "status": self.status,
            "model": self.cfg.model.name,
            "task": self.cfg.task.name,
            "metric": self.task.metric if self.task is not None else None,  # what `selected.dev` ranks (objective)
            "estimator": self.cfg.estimator.name,
            "sampler": self.cfg.sampler.name,
            "seed": self.cfg.seed,
            "steps": self.step,
            "skipped_steps": self.skipped_steps,
            "resumed_from": self.resumed_from,
            "forward_passes": self.forward_passes,
            "backward_passes": self.backward_passes,
            "train_loss": self.train_loss,
            "dev_initial": self.results["dev_initial"],
            "dev": self.results["dev"],
            "test": self.results["test"],
            "selected": self.selected,  # {by, step, dev, test}: the step budget.select chose, next to the final ones
            "wall_s": wall,
            "peak_mem_bytes": max(peak_bytes(device), self.peak_before.get(str(device), 0)),
            "memory": self.memory,
            "world_size": self.dp.world,
            "time_s": dict(self.clock.totals),
            "eval_examples_per_s": self.eval_examples / eval_s if eval_s > 0 else None,
            "trainable_params": stack.space.numel if stack is not None else 0,
            "state_bytes": (stack.estimator.state_bytes + stack.sampler.state_bytes
                            if stack is not None and stack.estimator is not None else 0),
            "config_hash": config_hash(self.cfg),
        }
        if self.error:
            out["error"] = self.error
        return out

    def cleanup(self) -> Dict[str, Any]:
        try:
            summary = self.summary()
            if self.dp.is_main:
                write_json_atomic(self.out_dir / "summary.json", summary)
            if self.metrics is not None:
                self.metrics.close()
            if self.trajectory is not None:
                self.trajectory.close()
            if self.scratch is not None:
                shutil.rmtree(self.scratch, ignore_errors=True)
            if self.stack is not None and self.stack.sampler is not None:
                self.stack.sampler.close()
            self.wandb.summary(summary)
            if self.dp.is_main:
                self.console.summary(summary, str(self.out_dir))
        finally:
            self.wandb.finish(exit_code=0 if self.status == "completed" else 1)
        return summary
