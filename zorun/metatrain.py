"""zorun-metatrain: train sampler=pertnn's networks once per base model (ZO Fine-tuner's L2L phase).

The loop, per meta-step, on the next batch of the round robin's task:

    1. meta-step at θ (:class:`~zorun.samplers.pertnn_meta.MetaLearner`): σ = PertNN(x), L± with
       no gradient, meta-loss L(θ − η_meta·ĝ(σ)) on the same batch, one backward, SGD on the networks;
    2. teacher step at θ on the same batch: the first-order estimator (fo-sgd, momentum 0.8,
       grad-norm clip 1.0), lr decayed linearly to 0 within the restart period.

Every `epochs_per_restart` epochs θ goes back to the base weights and the
teacher's momentum is dropped, so the networks keep seeing high-loss points.
Each task keeps its own L± and σ history (reset each epoch, as the
reference does). The model comes from :class:`zorun.stack.Stack`, the tasks'
batches and losses from :class:`zorun.data.Data`, so meta-training sees
exactly what a ZO run of the same config sees.

Outputs in the Hydra run directory: metrics.jsonl (meta-loss, the loss at θ
(the teacher's forward), their difference, the teacher's lr, σ range, every `log_every` meta-steps,
and one record per epoch), summary.json, and pertnn.safetensors.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig

from zorun import kernels
from zorun.data import Data
from zorun.errors import ZorunError
from zorun.models import load_tokenizer
from zorun.peaks import peak_bytes
from zorun.plan import mix_seed
from zorun.recovery import load_base_params
from zorun.registry import build_estimator
from zorun.samplers import pertnn_io
from zorun.samplers.pertnn_meta import History, MetaLearner
from zorun.stack import Stack
from zorun.tasks import build_task
from zorun.timing import Clock
from zorun.tracking import MetricsWriter, write_json_atomic
from zorun.tracking.files import check_writable

log = logging.getLogger(__name__)
OUTPUT = "pertnn.safetensors"


class MetaTrainer:
    def __init__(self, cfg: DictConfig, out_dir: str):
        self.cfg, self.m = cfg, cfg.metatrain
        self.out_dir = Path(out_dir)
        self.stack: Optional[Stack] = None  # the model, the teacher and the sampler's networks
        self.data: List[Data] = []  # per task: its batches and losses
        self.step = 0
        self.status, self.error = "running", None
        self.epochs: List[Dict[str, float]] = []
        self.start = time.perf_counter()
        self.metrics: Optional[MetricsWriter] = None

    def setup(self) -> None:
        cfg = self.cfg
        check_writable(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = MetricsWriter(self.out_dir / "metrics.jsonl")
        task_cfgs = [cfg.task, *cfg.metatrain.tasks.values()]
        self.names = [cfg.task.name, *cfg.metatrain.tasks.keys()]
        self.tasks = [build_task(t) for t in task_cfgs]
        self.stack = Stack.load(cfg, load_tokenizer(cfg.model))
        self.stack.add_trainers()  # sampler=pertnn (fresh or given networks), the teacher estimator
        self.data = [Data(self.stack, task) for task in self.tasks]
        kernels.select("torch", self.stack.space)  # the meta-gradient regenerates z with the torch generator
        self.learner = MetaLearner(self.stack.sampler, self.m.eps, self.m.eta_meta, self.m.lr_mlp)
        bs = cfg.budget.batch_size
        for name, task in zip(self.names, self.tasks):
            if len(task.train) < bs:
                raise ZorunError(f"task {name} has {len(task.train)} training examples, fewer than one batch "
                                 f"(budget.batch_size={bs})")
        self.steps_per_epoch = len(self.tasks[0].train) // bs
        log.info("meta-training %d networks on %s: %d epochs x %d steps x %d tasks, restart every %d epochs",
                 len(self.stack.space), ", ".join(self.names), self.m.epochs, self.steps_per_epoch, len(self.tasks),
                 self.m.epochs_per_restart)

    def restart(self) -> None:
        """θ back to the base model, a fresh teacher (no momentum)."""
        if self.step:
            load_base_params(self.cfg, self.stack.space)
        self.stack.estimator = build_estimator(self.cfg, self.stack.space)

    def train(self) -> None:
        m, n = self.m, len(self.tasks)
        streams = [data.batches() for data in self.data]
        period = m.epochs_per_restart * self.steps_per_epoch * n  # meta-steps per restart period
        lr0 = float(self.cfg.estimator.lr)
        window: List[Dict[str, float]] = []
        histories = [History.start(len(self.stack.space)) for _ in self.tasks]
        for epoch in range(m.epochs):
            if epoch % m.epochs_per_restart == 0:
                self.restart()
            for h in histories:  # σ_{t−1} carries over; L± restart at 0 every epoch (the reference's choice)
                h.losses = torch.zeros(2, dtype=torch.float64)
            epoch_records = []
            for _ in range(self.steps_per_epoch):
                for k in range(n):
                    batch = next(streams[k])
                    loss = self.data[k].make_loss(batch)
                    loss_grad = self.data[k].make_loss(batch, differentiable=True)
                    meta = self.learner.step(mix_seed(self.cfg.seed, self.step), histories[k], loss, loss_grad)
                    lr = lr0 * max(0.0, 1.0 - (self.step % period) / period)
                    teacher = self.stack.estimator.step(None, loss_grad, lr, Clock())
                    if not (math.isfinite(meta.meta_loss) and teacher.finite):
                        raise ZorunError(f"non-finite loss at meta-step {self.step} (meta-loss {meta.meta_loss}, "
                                         f"teacher {teacher.loss}); lower estimator.lr or metatrain.eta_meta")
                    # the teacher's forward is L(θ) on the same batch: the gain of the ZO step is L(θ) − L(θ')
                    record = {"meta_loss": meta.meta_loss, "loss": teacher.loss, "gain": teacher.loss - meta.meta_loss,
                              "lr": lr, "sigma_min": float(meta.sigma.min()), "sigma_max": float(meta.sigma.max()),
                              "factor": meta.factor}
                    window.append(record)
                    epoch_records.append(record)
                    self.step += 1
                    if self.step % m.log_every == 0:
                        self.log_window(window, epoch)
                        window = []
            means = {key: sum(r[key] for r in epoch_records) / len(epoch_records)
                     for key in ("meta_loss", "loss", "gain")}
            self.epochs.append({"epoch": epoch, **means})
            self.metrics.write({"epoch": epoch, "step": self.step, **{f"epoch_{k}": v for k, v in means.items()},
                                "wall_s": self.wall_s()})
            log.info("epoch %d: meta-loss %.5f, loss at θ %.5f, one-step gain %.3g", epoch, means["meta_loss"],
                     means["loss"], means["gain"])
        self.save()
        self.status = "completed"

    def log_window(self, window: List[Dict[str, Any]], epoch: int) -> None:
        mean = {key: sum(r[key] for r in window) / len(window)
                for key in ("meta_loss", "loss", "gain", "factor")}
        self.metrics.write({"step": self.step, "epoch": epoch, **mean, "lr": window[-1]["lr"],
                            "sigma_min": min(r["sigma_min"] for r in window),
                            "sigma_max": max(r["sigma_max"] for r in window), "wall_s": self.wall_s()})

    def save(self) -> Path:
        space, sc = self.stack.space, self.cfg.sampler
        model = self.cfg.model
        base = model.hf_id or model.path or model.name
        path = pertnn_io.save(self.out_dir / OUTPUT, self.stack.sampler.nets, [b.name for b in space.blocks],
                              [list(b.tensor.shape) for b in space.blocks], base_model=str(base), source="metatrain",
                              normalize=sc.normalize, embed_tokens=sc.embed_tokens)
        log.info("networks written to %s; use with: zorun model=%s sampler=pertnn sampler.checkpoint=%s",
                 path, model.name, path)
        return path

    def wall_s(self) -> float:
        return time.perf_counter() - self.start

    def summary(self) -> Dict[str, Any]:
        device = self.stack.device if self.stack is not None else torch.device("cpu")
        out = {"status": self.status, "model": self.cfg.model.name, "tasks": getattr(self, "names", []),
               "steps": self.step, "epochs": self.epochs, "wall_s": self.wall_s(),
               "peak_mem_bytes": peak_bytes(device),
               "checkpoint": str(self.out_dir / OUTPUT) if self.status == "completed" else None}
        if self.error:
            out["error"] = self.error
        return out

    def cleanup(self) -> Dict[str, Any]:
        summary = self.summary()
        write_json_atomic(self.out_dir / "summary.json", summary)
        if self.metrics is not None:
            self.metrics.close()
        return summary
