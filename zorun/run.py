"""Run: one configured experiment. setup() -> train() -> cleanup(), with evaluate() in between.

The training loop is plain PyTorch: per step the sampler plans a direction
distribution, the estimator spends its forward passes and writes the update
through the kernels, the sampler observes the result, and the step is logged
(metrics.jsonl, and trajectory.jsonl with what replays the update). The run
also owns checkpoints and resume, stop signals, and non-finite steps, which it
undoes bit for bit (see docs/checkpoints.md).
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch
from omegaconf import DictConfig

from zorun import kernels, threads
from zorun.checkpoint import (Checkpoint, CheckpointError, Checkpoints, NonFiniteError, all_finite, check_savable,
                              log_sizes, rng_state, set_rng_state, truncate_logs)
from zorun.distributed import DataParallel
from zorun.errors import ZorunError
from zorun.estimators.schedule import LRSchedule
from zorun.memory import peak_bytes, peaks, reset_peaks
from zorun.identity import config_hash
from zorun.models import load_model, load_tokenizer
from zorun.export import MODEL_DIR, save_model
from zorun.models.adapters import save_adapter
from zorun.models.fit import check_fit
from zorun.models.placement import input_device
from zorun.norm_guard import NormGuard
from zorun.params import ParamSpace
from zorun.preemption import StopSignals
from zorun.registry import ESTIMATORS, build_estimator, build_sampler
from zorun.replay import replay
from zorun.resume import comparable_config, config_change
from zorun.tasks import Example, Task, build_task
from zorun.tasks.scoring import (classification_loss, encode, evaluate_classification, evaluate_generation,
                                 evaluate_objective, lm_loss)
from zorun.timing import Clock
from zorun.tracking import Console, MetricsWriter, write_json_atomic
from zorun.tracking.files import check_writable
from zorun.trajectory import NAME as TRAJECTORY
from zorun.trajectory import RecordingLoss, TrajectoryWriter, read
from zorun.tracking.wandb_logger import WandbLogger, start_run_logger

log = logging.getLogger(__name__)


# Run counters a checkpoint carries (with the loss tail, dev_initial, wall time and phase times).
RUN_STATE = ("step", "batches_done", "forward_passes", "backward_passes", "eval_examples", "skipped_steps",
             "consecutive_skips", "selected")


class Run:
    def __init__(self, cfg: DictConfig, out_dir: str, signals: Optional[StopSignals] = None):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.dp = DataParallel.from_env()  # under torchrun: this rank; rank 0 alone writes to out_dir
        self.scratch: Optional[Path] = None  # other ranks: a private directory for their trajectory log
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
        self.signals = signals or StopSignals()  # entered by execute(); never set in library use
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
            self.check_data_parallel()
        latest = self.checkpoints.latest()  # every rank resumes from rank 0's checkpoints (a shared directory)
        if latest is None and cfg.resume:
            raise ZorunError(f"resume={cfg.resume}: {self.checkpoints.root} holds no checkpoint (budget.checkpoint_every=0 "
                             f"and never stopped by a signal?); start the run afresh without resume=")
        if self.dp.is_main:
            self.metrics = MetricsWriter(self.out_dir / "metrics.jsonl")
            self.wandb = start_run_logger(cfg, self.out_dir)
        with self.clock("setup"):
            self.task = build_task(cfg.task)  # data problems surface before the model loads
            self.tokenizer = load_tokenizer(cfg.model)
            self.build_model()
        if latest is not None:  # every check of the checkpoint before the logs are cut back to it
            with self.clock("checkpoint"):
                self.resume(latest)
        header = {"num_blocks": len(self.space), "estimator": cfg.estimator.name, "sampler": cfg.sampler.name}
        if self.dp.is_main:
            self.sampler.open_log(self.out_dir)
            # back to their sizes at the checkpoint (a fresh start empties them); writes append at the new end
            truncate_logs(self.log_paths(), latest.meta["logs"] if latest else {})
            self.trajectory = TrajectoryWriter(self.out_dir / TRAJECTORY, header)
        else:  # the same records, kept privately: an exact undo of a non-finite step replays them
            self.scratch = Path(tempfile.mkdtemp(prefix=f"zorun-rank{self.dp.rank}-"))
            self.trajectory = TrajectoryWriter(self.scratch / TRAJECTORY, header)
        log.info("model %s: %d trainable tensors, %.2fM parameters on %s%s", cfg.model.name,
                 len(self.space), self.space.numel / 1e6, self.device,
                 f"; data-parallel over {self.dp.world} ranks" if self.dp.enabled else "")

    def check_data_parallel(self) -> None:
        """What data-parallel ZO cannot do, refused in one line before the model loads."""
        cfg, world = self.cfg, self.dp.world
        if ESTIMATORS[cfg.estimator.name].differentiable:
            raise ZorunError(f"estimator={cfg.estimator.name} backpropagates, and zorun's data parallelism shares "
                             f"loss values only (no gradients); run it in one process, or use a ZO estimator")
        if cfg.model.get("device_map"):
            raise ZorunError(f"model.device_map={cfg.model.device_map} shards one model over the GPUs, torchrun "
                             f"replicates it per rank; use one of the two (drop model.device_map, or run without torchrun)")
        if cfg.budget.batch_size < world:
            raise ZorunError(f"budget.batch_size={cfg.budget.batch_size} is smaller than the {world} ranks: every rank "
                             f"needs examples; raise budget.batch_size to at least {world}")

    def log_paths(self) -> List[Path]:
        """The per-step logs this run appends to; a checkpoint records their sizes."""
        paths = [self.metrics.path, self.out_dir / TRAJECTORY]
        sampler_log = getattr(self.sampler, "log", None)  # a sampler's own per-step log (adalezo.jsonl)
        if isinstance(sampler_log, MetricsWriter):
            paths.append(sampler_log.path)
        return paths

    def build_model(self) -> None:
        """The model as the run starts from it, its trainable blocks, the sampler and the estimator."""
        cfg = self.cfg
        check_fit(cfg)  # a model that cannot fit is refused before any weight loads
        self.model = load_model(cfg.model, cfg.seed)
        self.device = input_device(self.model)  # where batches go: the first device of a placed model
        self.clock.sync_cuda = self.device.type == "cuda"
        self.space = ParamSpace.from_model(self.model)
        log.info(kernels.select(cfg.kernels, self.space))
        log.info(threads.apply(self.device, sum(p.numel() for p in self.model.parameters())))
        self.sampler = build_sampler(cfg, self.space, cfg.seed)
        self.estimator = build_estimator(cfg, self.space)

    # --------------------------------------------------------- checkpoints
    def run_state(self) -> Dict[str, Any]:
        state = {key: getattr(self, key) for key in RUN_STATE}
        state.update(losses=self.losses[-self.cfg.budget.log_every:], dev_initial=self.results["dev_initial"],
                     wall_s=self.wall_s(), time_s=dict(self.clock.totals))
        return state

    def save_checkpoint(self) -> bool:
        """Checkpoint the current step (once). False when the parameters are not finite or have blown up:
        nothing is written."""
        if self.saved_step == self.step:
            return True
        if not self.within_bounds():
            return False
        state = {"estimator": self.estimator.state_dict(), "sampler": self.sampler.state_dict(),
                 "rng": rng_state(), "run": self.run_state()}
        try:
            with self.clock("checkpoint"):
                if self.dp.is_main:
                    meta = {"config": comparable_config(self.cfg), "logs": log_sizes(self.log_paths())}
                    path = self.checkpoints.save(self.step, self.space, meta, state)
                else:  # identical parameters: this rank checks what rank 0 checks, and stops where it stops
                    check_savable(self.step, self.space, state)
                    path = None
        except NonFiniteError as err:
            last = self.checkpoints.steps()
            self.fail("diverged", f"{err}: an update overflowed; lower estimator.lr (last finite checkpoint: "
                                  f"{last[-1][1] if last else 'none'})")
            return False
        self.saved_step = self.step
        if path is not None:
            log.info("checkpoint %s", path)
        return True

    def resume(self, ckpt: Checkpoint) -> None:
        ckpt.check_model(self.space)
        refusal = config_change(ckpt.path, ckpt.meta["config"], self.cfg)
        if refusal is not None:
            raise refusal
        ckpt.load_params(self.space)
        state = ckpt.load_state()
        try:
            self.estimator.load_state_dict(state["estimator"])
            self.sampler.load_state_dict(state["sampler"])
        except (KeyError, ValueError, RuntimeError, TypeError) as err:
            raise CheckpointError(f"checkpoint {ckpt.path}: estimator/sampler state does not load "
                                  f"({type(err).__name__}: {err})") from err
        set_rng_state(state["rng"])
        run = state["run"]
        for key in RUN_STATE:
            setattr(self, key, run[key])
        self.losses = list(run["losses"])
        self.results["dev_initial"] = run["dev_initial"]
        self.start_time -= run["wall_s"]
        for phase, seconds in run["time_s"].items():
            self.clock.totals[phase] = self.clock.totals.get(phase, 0.0) + seconds
        self.resumed_from = self.saved_step = ckpt.step
        log.info("resumed from %s at step %d", ckpt.path, ckpt.step)

    def within_bounds(self) -> bool:
        """The parameter-norm guard (zorun.norm_guard): False, and status diverged, once θ has blown up."""
        blown = self.guard.check(self.space, self.step) if self.guard is not None else None
        if blown is not None:
            last = self.checkpoints.steps()
            self.fail("diverged", f"{blown} (last checkpoint: {last[-1][1] if last else 'none'})")
        return blown is None

    # ------------------------------------------------------ non-finite steps
    def restore_exactly(self, step: int) -> None:
        """θ and the estimator state as they were before `step`, bit for bit: the newest checkpoint (or the
        base model) plus the trajectory log replayed since.

        Undoing the probe by re-adding ε·z is not exact in floating point
        ((θ + a) − a ≠ θ when |a| ≫ |θ|), and a copy of θ taken before each
        step would double the memory; replay is exact and costs only perturb
        and update passes, and only when a step goes wrong.
        """
        latest = self.checkpoints.latest()
        sampler = self.sampler if self.sampler.replays_state else None  # its state is replayed too
        with self.clock("checkpoint"):
            if latest is not None:
                latest.load_params(self.space)
                state = latest.load_state()
                self.estimator.load_state_dict(state["estimator"])
            else:
                self.load_base_params()
                self.estimator = build_estimator(self.cfg, self.space)
                state = {"sampler": build_sampler(self.cfg, self.space, self.cfg.seed).state_dict()} if sampler else {}
            if sampler is not None:
                sampler.load_state_dict(state["sampler"])
            _, records = read(self.trajectory.path)
        replay(self.estimator, records, len(self.space), latest.step if latest else 0, step, self.clock, sampler)

    def load_base_params(self) -> None:
        """The trainable tensors of the model as loaded at the start (pretrained weights are read on the CPU;
        a random init is redrawn on the run's device, whose generator made it)."""
        cfg = self.cfg.model.copy()
        if str(getattr(cfg.init, "value", cfg.init)) == "pretrained" or cfg.get("device_map"):
            cfg.device = "cpu"  # a placed random-init model was drawn on the CPU, too
        cfg.device_map = None
        cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=cuda):  # load_model seeds the global generators
            base = ParamSpace.from_model(load_model(cfg, self.cfg.seed))
        with torch.no_grad():
            for mine, theirs in zip(self.space.blocks, base.blocks):
                mine.tensor.copy_(theirs.tensor)

    def undo_nonfinite(self, values: List[float]) -> bool:
        """Restore the step exactly and log it; False when the run must stop (status diverged)."""
        budget, t = self.cfg.budget, self.step
        action = _value(budget.on_nonfinite)
        if not getattr(self.estimator, "differentiable", False):  # first-order estimators leave θ untouched
            self.restore_exactly(t)
        self.skipped_steps += 1
        self.consecutive_skips += 1
        n = self.consecutive_skips
        self.write_record({"step": t + 1, "nonfinite": [float(v) for v in values], "action": action,
                           "wall_s": self.wall_s()})
        bad = all_finite(self.space)
        if bad is not None:
            self.fail("diverged", f"the parameters were already non-finite before step {t} ('{bad}'): an update "
                                  f"overflowed; lower estimator.lr")
        elif action == "stop":
            self.fail("diverged", f"non-finite loss at step {t}; parameters restored exactly; lower estimator.lr or "
                                  f"estimator.eps (budget.on_nonfinite=skip skips such steps)")
        elif n >= budget.max_nonfinite_skips:
            self.fail("diverged", f"{n} consecutive non-finite losses (steps {t - n + 1}..{t}); parameters restored "
                                  f"exactly to before step {t - n + 1}; lower estimator.lr or estimator.eps")
        else:
            log.warning("non-finite loss at step %d: skipped, parameters restored exactly (%d in a row, %d allowed)",
                        t, n, budget.max_nonfinite_skips)
            return True
        return False

    # ------------------------------------------------------------------- data
    def batches(self, start: int = 0, task: Optional[Task] = None) -> Iterator[List[Example]]:
        """Reshuffled every epoch with a generator seeded by (seed, epoch): reproducible order, and
        resumable at any position (`start` batches already consumed) without replaying the data.
        `task` (default: the run's) lets PertNN meta-training stream several tasks through one model."""
        train, bs = (task or self.task).train, self.cfg.budget.batch_size
        starts = range(0, max(len(train) - bs, 0) + 1, bs)  # drop the last partial batch
        epoch, skip = divmod(start, len(starts))
        while True:
            gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
            order = torch.randperm(len(train), generator=gen).tolist()
            for begin in starts[skip:]:
                yield [train[i] for i in order[begin : begin + bs]]
            skip = 0
            epoch += 1

    def make_loss(self, batch: List[Example], differentiable: bool = False, task: Optional[Task] = None):
        """The loss oracle of one step: a no-grad forward on the (already encoded) batch, returning a float.

        differentiable=True (first-order estimators): the forward keeps its
        autograd graph and returns the loss tensor, for one backward pass.
        """
        forward, weight = self.local_forward(batch, task)

        if differentiable:
            def loss_with_grad() -> torch.Tensor:
                with torch.enable_grad():
                    return forward()

            return loss_with_grad

        @torch.no_grad()
        def loss() -> float:
            return self.dp.mean(float(forward()), weight)  # data-parallel: the global batch's mean

        return loss

    def local_forward(self, batch: List[Example], task: Optional[Task] = None):
        """(one forward on this rank's share of the batch -> the loss tensor, what that loss averages over).

        The weight is the number of examples for the classification loss and of
        answer tokens for the LM loss, so that weighted slice means combine into
        exactly the full batch's mean.
        """
        task = task or self.task
        as_cls = task.type == "classification" and task.train_as_classification
        local = self.dp.shard(batch) if self.dp.enabled else batch
        enc = encode(self.tokenizer, local, self.cfg.model.max_length, gold_only=not as_cls).to(self.device)
        fn = classification_loss if as_cls else lm_loss
        weight = enc.num_examples if as_cls else int(enc.answer_mask[:, 1:].sum())
        return (lambda: fn(self.model, enc)), weight

    # --------------------------------------------------------------- evaluate
    def evaluate(self, split: str) -> Dict[str, float]:
        """The split's metrics; dev also gets `objective`, the training loss there (what budget.select=dev_loss ranks)."""
        examples = self.task.split(split)[: self.cfg.budget.max_eval_examples or None]
        if not examples:
            return {}
        log.info("evaluating %s: %d examples", split, len(examples))
        args = (self.model, self.tokenizer, examples, self.cfg.model.max_length,
                self.cfg.budget.eval_batch_size, self.device)
        as_cls = self.task.type == "classification" and self.task.train_as_classification
        with self.clock("eval"), self.console.evaluation(split, len(examples)) as progress:
            if self.task.type == "generation":
                result = evaluate_generation(*args, max_new_tokens=self.cfg.task.max_new_tokens, progress=progress)
            else:
                result = evaluate_classification(*args, progress=progress)
            if split == "dev":  # CE over the candidates is the classification loss already computed
                result["objective"] = result["loss"] if as_cls else evaluate_objective(*args, as_classification=False)
        self.eval_examples += len(examples)
        if split == "dev":
            self.console.dev(self.task.metric, result[self.task.metric])
        return result

    def select(self, dev: Dict[str, float], test: Optional[Dict[str, float]] = None, final: bool = False) -> bool:
        """Model selection on dev only, by budget.select: at a newly selected step, evaluate test there (unless
        given). A tie keeps the earlier step (HF's load_best_model_at_end, which MeZO uses, does the same)."""
        rule = _value(self.cfg.budget.select)
        if not dev:
            return False
        if rule == "last":
            chosen = final
        elif self.selected is None:
            chosen = True
        elif rule == "dev_loss":
            chosen = dev["objective"] < self.selected["dev"]["objective"]
        else:
            chosen = dev[self.task.metric] > self.selected["dev"][self.task.metric]
        if not chosen:
            return False
        self.selected = {"by": rule, "step": self.step, "dev": dev,
                         "test": self.evaluate("test") if test is None else test}
        return True

    def steps_per_epoch(self) -> int:
        """Batches in one pass over the training set (the last partial batch is dropped, see batches())."""
        return max(len(self.task.train) - self.cfg.budget.batch_size, 0) // self.cfg.budget.batch_size + 1

    def total_steps(self) -> int:
        """budget.steps, or budget.epochs whole passes over the training set."""
        budget = self.cfg.budget
        return budget.epochs * self.steps_per_epoch() if budget.epochs else budget.steps

    def evaluates_at(self, step: int) -> bool:
        """Whether dev is evaluated after `step` steps (before the last): each epoch's end, or budget.eval_every."""
        budget = self.cfg.budget
        every = self.steps_per_epoch() if budget.epochs else budget.eval_every
        return bool(every) and step % every == 0 and step < self.total_steps()

    # ------------------------------------------------------------------ train
    def train(self) -> None:
        cfg, budget = self.cfg, self.cfg.budget
        total = self.total_steps()
        if budget.epochs:
            log.info("budget.epochs=%d: %d steps (%d per epoch), dev at each epoch's end", budget.epochs, total,
                     self.steps_per_epoch())
        schedule = LRSchedule.from_config(cfg.estimator, total)
        if self.results["dev_initial"] is None and self.signals.received is None:
            self.results["dev_initial"] = self.evaluate("dev")
            log.info("dev before training: %s", self.results["dev_initial"])
        batches = self.batches(self.batches_done)
        self.guard = NormGuard(self.space)
        self.console.start(total, f"{cfg.estimator.name}/{cfg.sampler.name}", completed=self.step)
        try:
            while self.step < total and not self.dp.any(self.signals.received is not None):
                lr = schedule(self.step)
                proceed, result = self.train_step(next(batches), lr)
                self.console.advance(result.loss)
                if self.step % budget.log_every == 0 or self.step == total:
                    self.log_step(self.losses[-budget.log_every:], lr, result)
                if not proceed or (self.step % budget.log_every == 0 and not self.within_bounds()):
                    break
                if self.evaluates_at(self.step):
                    dev = self.evaluate("dev")
                    record = {"step": self.step, "dev": dev, "wall_s": self.wall_s(), "train_s": self.train_s()}
                    if self.select(dev):
                        record["test"] = self.selected["test"]
                    self.write_record(record)
                if budget.checkpoint_every and self.step % budget.checkpoint_every == 0 and not self.save_checkpoint():
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
                self.save_checkpoint()  # whatever budget.checkpoint_every: the work so far must survive
            return
        if budget.checkpoint_every:
            self.save_checkpoint()  # the final (or, diverged, the restored) parameters; a relaunch re-evaluates
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
            adapter = save_adapter(self.model, self.out_dir)
            model = None
            if budget.save_merged or (budget.save_model and adapter is None):
                model = save_model(self.model, self.tokenizer, self.out_dir / MODEL_DIR)
                log.info("model %s (AutoModelForCausalLM.from_pretrained loads it)", model)
        if adapter is not None:
            self.wandb.log_folder(adapter, "adapter")
        if model is not None and self.cfg.logger.get("log_model"):
            self.wandb.log_folder(model, "model")

    def train_step(self, batch: List[Example], lr: float):
        """One step on one batch: (whether to go on, the estimator's result). A non-finite loss is undone."""
        self.batches_done += 1
        loss_fn = RecordingLoss(self.make_loss(batch, differentiable=self.estimator.differentiable))
        with self.clock("sampler"):
            plan = self.sampler.plan(self.step)
        if self.sampler.wants_gradient(self.step):
            with self.clock("sampler"):  # a diagnostic of the sampler's, counted as its time
                self.sampler.observe_gradient(self.true_gradient(batch))
        forward_peak = self.forward_peak(batch) if self.memory is None else None
        result = self.estimator.step(plan, loss_fn, lr, self.clock)
        if forward_peak is not None:
            self.memory = {dev: {"step_peak_bytes": step, "forward_peak_bytes": forward_peak[dev],
                                 "step_over_forward": step / forward_peak[dev] if forward_peak[dev] else None}
                           for dev, step in peaks(self.devices()).items()}
        self.forward_passes += result.forward_passes
        self.backward_passes += result.backward_passes
        self.trajectory.step(self.step, plan, lr, loss_fn.values, result.grad, skip=not result.finite)
        if result.finite:
            with self.clock("sampler"):
                self.sampler.observe(plan, result)
            self.consecutive_skips = 0
            self.losses.append(result.loss)
            proceed = True
        else:
            proceed = self.undo_nonfinite(loss_fn.values)
        self.step += 1
        return proceed, result

    def true_gradient(self, batch: List[Example]) -> List[torch.Tensor]:
        """∇L of the batch at the current θ by one backward pass, per block (a diagnostic; costs activations)."""
        loss = self.make_loss(batch, differentiable=True)()
        tensors = [b.tensor for b in self.space.blocks]
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)  # a block the loss never reads: ∇ = 0
        return [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]

    def devices(self) -> List[torch.device]:
        return sorted({self.device} | {b.tensor.device for b in self.space.blocks}, key=str)

    def forward_peak(self, batch: List[Example]) -> Dict[str, int]:
        """Peak memory per device of one inference forward on this step's batch (this rank's share); the
        peaks are then reset, so the step that follows is measured alone. Once per attempt (one extra forward)."""
        forward, _ = self.local_forward(batch)
        self.peak_before = peaks(self.devices())  # setup and the first evaluation: summary's peak_mem_bytes keeps them
        reset_peaks(self.devices())
        with torch.no_grad():
            forward()
        found = peaks(self.devices())
        reset_peaks(self.devices())
        return found

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
        record.update(self.sampler.log_record())
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
        device = getattr(self, "device", torch.device("cpu"))
        eval_s = self.clock.totals["eval"]
        out = {
            "status": self.status,
            "model": self.cfg.model.name,
            "task": self.cfg.task.name,
            "metric": self.task.metric if hasattr(self, "task") else None,  # what `selected.dev` ranks (cli.objective)
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
            "trainable_params": self.space.numel if hasattr(self, "space") else 0,
            "state_bytes": (self.estimator.state_bytes + self.sampler.state_bytes) if hasattr(self, "estimator") else 0,
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
            if getattr(self, "sampler", None) is not None:
                self.sampler.close()
            self.wandb.summary(summary)
            if self.dp.is_main:
                self.console.summary(summary, str(self.out_dir))
        finally:
            self.wandb.finish(exit_code=0 if self.status == "completed" else 1)
        return summary


def _value(option: Any) -> Any:
    """An enum option's value (configs composed by Hydra hold Enum members, reloaded YAML plain strings)."""
    return getattr(option, "value", option)


def execute(cfg: DictConfig) -> Dict[str, Any]:
    """Hydra's task function: run, always write summary.json, map failures to exit codes.

    Exit codes: 2 a usage or data error, 3 diverged, 128 + signal number when
    stopped by a signal (143 for SIGTERM, 130 for SIGINT) after its checkpoint,
    and 128 + the second signal's number when a second one stops it at once.
    """
    from hydra.core.hydra_config import HydraConfig

    with StopSignals() as signals:
        run = Run(cfg, HydraConfig.get().runtime.output_dir, signals)
        exit_code = 0
        try:
            run.setup()
            run.train()
        except ZorunError as err:
            run.fail("failed", str(err))
            print(f"zorun: error: {err}", file=sys.stderr)
            exit_code = 2
        except KeyboardInterrupt:  # a second signal: stop at once, no checkpoint
            run.fail("stopped", f"interrupted at step {run.step}")
            exit_code = signals.interrupt_exit_code
        except Exception as err:  # a bug: keep the traceback, but never lose the summary
            run.fail("failed", f"{type(err).__name__}: {err}")
            run.cleanup()
            raise
        summary = run.cleanup()
        run.dp.close()
    if summary["status"] == "diverged":
        print(f"zorun: error: {summary['error']}", file=sys.stderr)
        exit_code = 3
    elif summary["status"] == "stopped" and signals.received is not None and not exit_code:
        saved = (f"checkpoint saved; continue with: zorun resume={run.out_dir}" if run.saved_step == run.step
                 else "no checkpoint (budget.checkpoint_on_stop=false)")
        print(f"zorun: {summary['error']}; {saved}", file=sys.stderr)
        exit_code = signals.exit_code
        signals.hand_over()  # e.g. submitit: requeue the job, which resumes from the checkpoint
    if exit_code:
        sys.exit(exit_code)
    return summary
