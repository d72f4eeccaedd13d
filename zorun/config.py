"""Dataclass schemas for every config group, registered with Hydra's ConfigStore.

Each YAML file in ``conf/<group>/`` starts its defaults list with
``/schema/<group>/<schema>@_here_``, so OmegaConf checks types, enum values
and unknown keys while Hydra composes. Ranges (lr > 0, ...) cannot be
expressed as types; :func:`validate` checks them before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from zorun.errors import ConfigError


class DType(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class ModelInit(str, Enum):
    pretrained = "pretrained"  # load weights from model.path or the hub id
    random = "random"  # build the architecture from model.arch, random weights


class NonFinite(str, Enum):
    skip = "skip"  # restore the step's parameters exactly and go on with the next batch
    stop = "stop"  # restore exactly, then end the run with status diverged


class KernelBackend(str, Enum):
    auto = "auto"  # Triton for CUDA tensors when it imports, the torch reference otherwise
    triton = "triton"
    torch = "torch"


class PeftKind(str, Enum):
    none = "none"  # full-parameter fine-tuning
    lora = "lora"  # LoRA adapters (model.lora.*) through peft
    prefix = "prefix"  # prefix tuning (model.prefix.*) through peft


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's placement strategies


class TaskType(str, Enum):
    classification = "classification"
    generation = "generation"


@dataclass
class LoraOptions:
    """model.peft=lora; defaults are MeZO's (r 8, alpha 16 on the attention query and value projections)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0  # ZO probes need deterministic forwards; MeZO uses none
    target_modules: Optional[List[str]] = None  # None: peft's default for the architecture (q_proj/v_proj, GPT-2 c_attn)


class PrefixInit(str, Enum):
    real_activations = "real_activations"  # each layer's keys/values of random vocabulary ids (MeZO's)
    random = "random"  # peft's random start


@dataclass
class PrefixOptions:
    """model.peft=prefix; MeZO's prefix tuning uses 5 virtual tokens."""

    num_virtual_tokens: int = 5
    init: PrefixInit = PrefixInit.real_activations


@dataclass
class ModelConfig:
    name: str = "tiny"
    hf_id: Optional[str] = None  # Hugging Face hub id of the checkpoint
    # A local model wins over hf_id and over the preset's random-init fields; its config gives the architecture:
    path: Optional[str] = None  # a directory with a saved Hugging Face checkpoint
    gguf_file: Optional[str] = None  # a GGUF file (llama.cpp, ollama), dequantised once and cached (zorun/models/gguf.py)
    # "package/file.gguf": the GGUF file an installed package ships, used when hf_id cannot load (offline, not cached)
    gguf_package: Optional[str] = None
    init: ModelInit = ModelInit.pretrained
    dtype: DType = DType.float32
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_length: int = 2048  # prompts are truncated from the left to fit
    # Architecture fields (transformers config kwargs incl. model_type):
    # what model.init=random builds, and what the tiny model is.
    arch: Dict[str, Any] = field(default_factory=dict)
    tokenizer: Optional[str] = None  # "builtin" for the offline tiny tokenizer; else hub id/path
    bos_token_id: Optional[int] = None  # the id every prompt starts with, instead of the tokenizer's BOS (OPT: 0)
    trust_remote_code: bool = False  # run the model repository's own Python code (transformers' flag); off unless set
    peft: PeftKind = PeftKind.none  # train an adapter only: lora | prefix (zorun/models/adapters.py)
    lora: LoraOptions = field(default_factory=LoraOptions)
    prefix: PrefixOptions = field(default_factory=PrefixOptions)
    device_map: Optional[str] = None  # auto | balanced | balanced_low_0 | sequential: shard over the GPUs (accelerate)


@dataclass
class DatasetConfig:
    path: Optional[str] = None  # hub id, e.g. nyu-mll/glue
    name: Optional[str] = None  # hub config, e.g. sst2


@dataclass
class DataFilesConfig:
    """Local copies of a benchmark's hub splits, with the hub's fields (json, jsonl, parquet or csv)."""

    train: Optional[str] = None  # train and dev examples are drawn from it
    validation: Optional[str] = None  # test examples are drawn from it


class IclSampling(str, Enum):
    per_example = "per_example"  # each eval example its own draw from the training split, seeded per example (MeZO)
    fixed = "fixed"  # one set for every prompt: the first task.icl_demos training examples


@dataclass
class TaskConfig:
    name: str = "synthetic"
    type: TaskType = TaskType.classification
    num_train: int = 1000
    num_dev: int = 500
    num_test: int = 1000
    seed: int = 0  # seed of the data sampling, independent of the run seed
    train_as_classification: bool = True  # CE over candidates; False: LM loss on the answer
    max_new_tokens: int = 50  # generation tasks
    path: Optional[str] = None  # task=local: the user's JSONL file
    candidates: List[str] = field(default_factory=list)  # task=local: shared candidates
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    data_files: DataFilesConfig = field(default_factory=DataFilesConfig)  # wins over task.dataset
    icl_demos: int = 0  # in-context demonstrations before each dev/test prompt (MeZO's ICL: 32)
    icl_sampling: IclSampling = IclSampling.per_example  # MeZO's icl.sh: each example's own demonstrations
    options: Dict[str, Any] = field(default_factory=dict)  # task-specific knobs


class LRScheduleKind(str, Enum):
    constant = "constant"
    linear = "linear"  # linear decay to min_lr_ratio·lr at the last step
    cosine = "cosine"  # half a cosine down to min_lr_ratio·lr


@dataclass
class EstimatorConfig:
    """Fields every estimator has (zorun/estimators/); each estimator's schema below adds its own."""

    name: str = "mezo"
    lr: float = 1e-3
    weight_decay: float = 0.0  # decoupled, θ ← (1 − lr·λ)θ; never on biases or norm weights
    schedule: LRScheduleKind = LRScheduleKind.constant
    warmup_steps: int = 0  # linear warm-up from 0 (Hugging Face convention)
    min_lr_ratio: float = 0.0  # linear/cosine: the lr at the last step, as a fraction of lr


@dataclass
class ZOEstimatorConfig(EstimatorConfig):
    """estimator=mezo and zo-sign; the base of every zeroth-order estimator."""

    eps: float = 1e-3
    one_sided: bool = False  # (L(θ+εz) − L(θ))/ε instead of the central difference
    q: int = 1  # queries per step, averaged, applied sequentially


@dataclass
class ZOMomentumConfig(ZOEstimatorConfig):
    name: str = "zo-sgd-momentum"
    momentum: float = 0.9  # μ: buf ← μ·buf + g·z


@dataclass
class ZOAdamConfig(ZOEstimatorConfig):
    name: str = "zo-adam"
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-8


@dataclass
class HiZOOConfig(ZOEstimatorConfig):
    name: str = "hizoo"
    hessian_smooth: float = 1e-6  # α: EMA rate of the diagonal Hessian estimate (public script: 0 or 1e-8)


@dataclass
class LOZOConfig(ZOEstimatorConfig):
    name: str = "lozo"
    rank: int = 2  # r: U is m×r, V is n×r
    interval: int = 50  # ν: steps a V is kept before it is redrawn


@dataclass
class LOZOMConfig(LOZOConfig):
    name: str = "lozo-m"
    beta1: float = 0.9  # momentum of the low-rank M


class MixedPrecision(str, Enum):
    none = "none"  # the passes in the weights' dtype
    float16 = "float16"  # autocast over fp32 weights with loss scaling: HF's --fp16, MeZO's FT rows
    bfloat16 = "bfloat16"  # autocast over fp32 weights (HF's --bf16)


@dataclass
class FOSGDConfig(EstimatorConfig):
    name: str = "fo-sgd"
    momentum: float = 0.0
    max_grad_norm: float = 0.0  # clip the gradient's global norm to this (0: no clip); PertNN's teacher uses 1.0
    mixed_precision: MixedPrecision = MixedPrecision.none


@dataclass
class FOAdamConfig(EstimatorConfig):
    name: str = "fo-adam"
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float = 0.0  # clip the gradient's global norm to this (0: no clip)
    mixed_precision: MixedPrecision = MixedPrecision.none


ESTIMATOR_SCHEMAS = {
    "mezo": ZOEstimatorConfig,
    "zo-sign": ZOEstimatorConfig,
    "zo-sgd-momentum": ZOMomentumConfig,
    "zo-adam": ZOAdamConfig,
    "hizoo": HiZOOConfig,
    "lozo": LOZOConfig,
    "lozo-m": LOZOMConfig,
    "fo-sgd": FOSGDConfig,
    "fo-adam": FOAdamConfig,
}


@dataclass
class SamplerConfig:
    name: str = "uniform"


@dataclass
class AdaLeZOSamplerConfig(SamplerConfig):
    """sampler=adalezo (zorun/samplers/adalezo.py); defaults from ALGORITHMS.md."""

    name: str = "adalezo"
    k_ratio: float = 0.2  # draws per step k = max(1, floor(k_ratio * number of layers))
    tau: float = 0.2  # softmax temperature over the max-normalised EMA rewards
    gamma: float = 0.01  # uniform floor: every layer keeps probability >= gamma / N
    ema_alpha: float = 0.1  # EMA rate of the reward |g|
    ipw_clip: float = 10.0  # cap on 1/(k*p_l); inf: no cap, exactly unbiased
    interval: int = 1  # redraw the active layers every `interval` steps
    warm_start: bool = False  # start with the policy biased to the deepest 40% of layers


class MeanInit(str, Enum):
    zero = "zero"  # μ_0 = 0: the first steps sample as the uniform sampler does
    random = "random"  # μ_0 = a random unit vector per block (the public code's alternative)


@dataclass
class LDSDSamplerConfig(SamplerConfig):
    """sampler=ldsd (zorun/samplers/ldsd.py); defaults from the public script (ALGORITHMS.md)."""

    name: str = "ldsd"
    k: int = 5  # K candidate directions per step, best of K (K + 2 forward passes)
    sigma: float = 1.0  # policy std: directions z ~ N(μ, σ²I)
    lr_mu: float = 4e-2  # η_μ: learning rate of the REINFORCE step on μ (0: best-of-K without learning)
    mu_init: MeanInit = MeanInit.zero
    mean_fraction: float = 1.0  # share of the blocks that keep a learned mean (random fixed subset); others μ = 0
    cosine_every: int = 0  # log cos(μ, −∇L) every n steps, ∇L by autograd (a backward pass; small models); 0: never


@dataclass
class PertNNSamplerConfig(SamplerConfig):
    """sampler=pertnn (zorun/samplers/pertnn.py): ZO Fine-tuner's learned per-block perturbation scales."""

    name: str = "pertnn"
    # trained networks (safetensors, see docs/pertnn.md); null: freshly initialised ones (meta-training only)
    checkpoint: Optional[str] = None
    rename: List[str] = field(default_factory=list)  # "REGEX=>REPLACEMENT" rules: model block name -> checkpoint name
    normalize: bool = True  # trace-preserving normalisation: sum_b d_b (f sigma_b)^2 = sum_b d_b
    embed_tokens: int = 15  # embedding matrices count as d_b = hidden x embed_tokens x batch_size (the reference's 15)
    batch_size: int = 8  # the embedding rule's batch size (the YAML ties it to budget.batch_size)
    log_every: int = 10  # steps between the per-block sigma records of pertnn.jsonl
    init_seed: int = 0  # seed of freshly initialised networks (checkpoint=null)


class Selection(str, Enum):
    """Which evaluated step the run reports as its result (summary.json's `selected`)."""

    dev_loss = "dev_loss"  # the lowest training loss on dev: MeZO's load_best_model_at_end (HF's metric "loss")
    dev_metric = "dev_metric"  # the highest dev accuracy (F1 for generation)
    last = "last"  # the final step


@dataclass
class BudgetConfig:
    name: str = "demo"
    steps: int = 1000
    epochs: int = 0  # > 0: train this many passes over the training set instead of `steps`, dev at each epoch's end
    select: Selection = Selection.dev_loss  # the step whose test the run reports (dev only chooses it)
    batch_size: int = 16
    eval_batch_size: int = 32
    eval_every: int = 0  # 0: only before and after training
    log_every: int = 10
    time_limit_s: float = 0.0  # 0: no limit; else stop training (status completed) after this
    checkpoint_every: int = 1000  # steps between checkpoints (0: only when stopped by a signal)
    keep_checkpoints: int = 2  # the newest k are kept
    checkpoint_on_stop: bool = True  # SIGTERM/SIGINT write a checkpoint before the run ends (false: nothing written)
    max_eval_examples: int = 0  # evaluate dev and test on at most this many examples each (0: the whole splits)
    save_model: bool = True  # a completed full-parameter run writes model/ (Hugging Face save_pretrained)
    save_merged: bool = False  # model.peft=lora: also write model/ with the adapter merged into the weights
    on_nonfinite: NonFinite = NonFinite.skip  # a non-finite loss: the step is undone exactly, then skip or stop
    max_nonfinite_skips: int = 5  # this many consecutive skipped steps end the run as diverged


class WandbMode(str, Enum):
    auto = "auto"  # WANDB_MODE if set, else online with credentials (env or netrc), else offline
    online = "online"
    offline = "offline"
    disabled = "disabled"


@dataclass
class LoggerConfig:
    """Local outputs (metrics.jsonl, summary.json, console) are always written; this adds trackers."""

    name: str = "none"
    progress: bool = True  # rich progress bar (only when stdout is a terminal)


@dataclass
class WandbLoggerConfig(LoggerConfig):
    name: str = "wandb"
    project: str = "zorun"
    entity: Optional[str] = None  # W&B team or user; None: the account's default
    mode: WandbMode = WandbMode.auto
    group: Optional[str] = None  # None: "<sweep name>-<launch time>" in a multirun, unset in a single run
    tags: List[str] = field(default_factory=list)  # added to model, task, estimator, sampler
    dir: Optional[str] = None  # where W&B writes its files; None: the run's output directory
    init_timeout_s: float = 30.0  # give up on the W&B server after this and log offline
    log_model: bool = False  # upload the run's model/ as a W&B artifact (large; adapters are always uploaded)
    # The launch time, one value for every job of a multirun (Hydra copies the
    # resolver cache from the sweep to its jobs; the multirun callback primes it).
    launched: str = "${now:%Y-%m-%d_%H-%M-%S}"


@dataclass
class RootConfig:
    seed: int = 0
    kernels: KernelBackend = KernelBackend.auto
    model: Any = None
    task: Any = None
    estimator: Any = None
    sampler: Any = None
    budget: Any = None
    logger: Any = None
    force: bool = False  # multirun: re-run jobs even when a completed summary.json with the same config exists
    # multirun: a job whose sampler/estimator combination is refused is recorded as
    # incompatible (summary.json, the report's n/a cells) instead of refusing the grid
    skip_incompatible: bool = False
    resume: Optional[str] = None  # a run directory to continue from its last checkpoint (zorun resume=DIR)
    # what a sweeper plugin optimises: a dotted key of summary.json (selected.dev.accuracy, ...); null: the dev
    # metric at the step budget.select chose
    optimized_metric: Optional[str] = None


@dataclass
class MetaTrainConfig:
    """zorun-metatrain (zorun/metatrain.py): PertNN meta-training; defaults from ALGORITHMS.md."""

    epochs: int = 20  # an epoch: one pass over the first task's training set (the others cycle alongside)
    epochs_per_restart: int = 4  # reset θ to the base model and the teacher's momentum every this many epochs
    eta_meta: float = 1e-6  # η_meta: the lr of the ZO step whose outcome is the meta-loss
    lr_mlp: float = 1e-3  # SGD lr of the networks
    eps: float = 1e-3  # ε of the SPSA probe
    log_every: int = 10  # meta-steps between metrics.jsonl records
    # extra tasks of the round robin, next to `task`: +task@metatrain.tasks.NAME=OPTION (then metatrain.tasks.NAME.*=...)
    tasks: Dict[str, Any] = field(default_factory=dict)


@dataclass
class MetaTrainRootConfig(RootConfig):
    metatrain: MetaTrainConfig = field(default_factory=MetaTrainConfig)


def local_model(model: DictConfig) -> Optional[str]:
    """model.path or model.gguf_file: the local model a user gave, if any."""
    return model.get("path") or model.get("gguf_file")


def preset_value(value: Any, local: Any = None, *, _parent_: DictConfig) -> Any:
    """${zorun.preset:VALUE[,LOCAL]}: a preset field that yields to a local model (LOCAL then, default null).

    A value set on the command line replaces the interpolation, so an explicit
    model.init=random next to model.path stays, and validate() refuses the pair."""
    return local if local_model(_parent_) else value


def model_name(default: str, *, _parent_: DictConfig) -> str:
    """${zorun.model_name:PRESET}: a local model is named after its directory (or GGUF file), else PRESET.

    Run directories, summaries and W&B names read model.name; model.name=NAME overrides."""
    if _parent_.get("path"):
        return Path(str(_parent_.path)).expanduser().resolve().name or default
    if _parent_.get("gguf_file"):
        return Path(str(_parent_.gguf_file)).stem or default
    return default


for _name, _resolver in {"zorun.preset": preset_value, "zorun.model_name": model_name}.items():
    if not OmegaConf.has_resolver(_name):  # saved run configs (.hydra/config.yaml) use them too
        OmegaConf.register_new_resolver(_name, _resolver)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="zorun_schema", node=RootConfig)
    cs.store(name="zorun_metatrain_schema", node=MetaTrainRootConfig)
    for group, node in {
        "model": ModelConfig,
        "task": TaskConfig,
        "estimator": EstimatorConfig,
        "sampler": SamplerConfig,
        "budget": BudgetConfig,
        "logger": LoggerConfig,
    }.items():
        cs.store(group=f"schema/{group}", name="base", node=node)
    cs.store(group="schema/logger", name="wandb", node=WandbLoggerConfig)
    cs.store(group="schema/sampler", name="adalezo", node=AdaLeZOSamplerConfig)
    cs.store(group="schema/sampler", name="ldsd", node=LDSDSamplerConfig)
    cs.store(group="schema/sampler", name="pertnn", node=PertNNSamplerConfig)
    for name, node in ESTIMATOR_SCHEMAS.items():
        cs.store(group="schema/estimator", name=name, node=node)


def _require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value} is out of range: {rule}")


def validate(cfg: DictConfig) -> None:
    """Range and combination checks that types cannot express. Raises ConfigError."""
    est, bud, task = cfg.estimator, cfg.budget, cfg.task
    _validate_estimator(est)
    _require(bud.steps >= 0, "budget.steps", bud.steps, "it must be >= 0")
    _require(bud.epochs >= 0, "budget.epochs", bud.epochs, "it must be >= 0 (0: budget.steps counts)")
    _require(bud.batch_size >= 1, "budget.batch_size", bud.batch_size, "it must be >= 1")
    _require(bud.eval_batch_size >= 1, "budget.eval_batch_size", bud.eval_batch_size, "it must be >= 1")
    _require(bud.eval_every >= 0, "budget.eval_every", bud.eval_every, "it must be >= 0 (0: only at start and end)")
    _require(bud.log_every >= 1, "budget.log_every", bud.log_every, "it must be >= 1")
    _require(bud.time_limit_s >= 0, "budget.time_limit_s", bud.time_limit_s, "it must be >= 0 (0: none)")
    _require(bud.checkpoint_every >= 0, "budget.checkpoint_every", bud.checkpoint_every,
             "it must be >= 0 (0: checkpoint only when stopped)")
    _require(bud.keep_checkpoints >= 1, "budget.keep_checkpoints", bud.keep_checkpoints, "it must be >= 1")
    _require(bud.max_eval_examples >= 0, "budget.max_eval_examples", bud.max_eval_examples, "it must be >= 0 (0: no cap)")
    peft = getattr(cfg.model.peft, "value", cfg.model.peft)
    if bud.save_merged and peft != "lora":
        raise ConfigError(f"budget.save_merged=true merges a LoRA adapter into the weights, and model.peft={peft} "
                          f"has none to merge; drop budget.save_merged or use model.peft=lora")
    _require(bud.max_nonfinite_skips >= 1, "budget.max_nonfinite_skips", bud.max_nonfinite_skips, "it must be >= 1")
    for split in ("num_train", "num_dev", "num_test"):
        _require(task[split] >= 0, f"task.{split}", task[split], "it must be >= 0")
    _require(task.icl_demos >= 0, "task.icl_demos", task.icl_demos, "it must be >= 0")
    if task.icl_sampling == IclSampling.fixed:
        _require(task.icl_demos <= task.num_train, "task.icl_demos", task.icl_demos,
                 f"task.icl_sampling=fixed shows the first training examples, and task.num_train={task.num_train}")
    _require(task.max_new_tokens >= 1, "task.max_new_tokens", task.max_new_tokens, "it must be >= 1")
    _require(cfg.model.max_length >= 8, "model.max_length", cfg.model.max_length, "it must be >= 8")
    if cfg.sampler.name == "adalezo":
        _validate_adalezo(cfg.sampler)
    if cfg.sampler.name == "ldsd":
        _validate_ldsd(cfg.sampler)
    if cfg.sampler.name == "pertnn":
        _validate_pertnn(cfg.sampler)
    _validate_model(cfg.model)
    if cfg.model.init == ModelInit.random and not cfg.model.arch:
        raise ConfigError(f"model.init=random needs model.arch fields, and model={cfg.model.name} has none")
    if task.name == "local" and not task.path:
        raise ConfigError("task=local needs task.path=FILE.jsonl (one JSON object per line)")


def _validate_model(m: DictConfig) -> None:
    if m.path and m.gguf_file:
        raise ConfigError(f"model.path={m.path} and model.gguf_file={m.gguf_file} both name the model; keep one of them")
    if local_model(m) and m.init == ModelInit.random:
        key = "path" if m.path else "gguf_file"
        raise ConfigError(f"model.init=random builds model.arch with random weights, but model.{key}={m[key]} gives "
                          f"the model; drop model.init=random to train it, or drop model.{key}")
    if m.path and not Path(m.path).expanduser().is_dir():
        raise ConfigError(f"model.path={m.path} is not a directory; point it at a saved Hugging Face checkpoint")
    if m.gguf_file:  # a missing, foreign or truncated file: refused before any run starts
        from zorun.models.gguf import check_file

        check_file(Path(m.gguf_file).expanduser())
    _require(m.lora.r >= 1, "model.lora.r", m.lora.r, "it must be >= 1")
    _require(m.lora.alpha > 0, "model.lora.alpha", m.lora.alpha, "it must be > 0")
    _require(0 <= m.lora.dropout < 1, "model.lora.dropout", m.lora.dropout, "it must be in [0, 1)")
    _require(m.prefix.num_virtual_tokens >= 1, "model.prefix.num_virtual_tokens", m.prefix.num_virtual_tokens,
             "it must be >= 1")
    if m.device_map is not None:
        _require(m.device_map in DEVICE_MAPS, "model.device_map", m.device_map,
                 f"choose one of {', '.join(DEVICE_MAPS)} (accelerate's strategies), or null for one device")
        if m.device != "auto":
            raise ConfigError(f"model.device_map={m.device_map} places the model over every visible GPU, so "
                              f"model.device={m.device} cannot apply; drop one of them (CUDA_VISIBLE_DEVICES picks GPUs)")


def _validate_adalezo(s: DictConfig) -> None:
    _require(0 < s.k_ratio <= 1, "sampler.k_ratio", s.k_ratio, "it must be in (0, 1]: the fraction of layers drawn per step")
    _require(s.tau > 0, "sampler.tau", s.tau, "it must be > 0 (large values give a uniform policy)")
    _require(0 <= s.gamma <= 1, "sampler.gamma", s.gamma, "it must be in [0, 1]")
    _require(0 < s.ema_alpha <= 1, "sampler.ema_alpha", s.ema_alpha, "it must be in (0, 1]")
    _require(s.ipw_clip > 0, "sampler.ipw_clip", s.ipw_clip, "it must be > 0 (inf: no clip)")
    _require(s.interval >= 1, "sampler.interval", s.interval, "it must be >= 1")


def _validate_ldsd(s: DictConfig) -> None:
    _require(s.k >= 2, "sampler.k", s.k, "it must be >= 2 (the leave-one-out baseline needs two candidates)")
    _require(s.sigma > 0, "sampler.sigma", s.sigma, "it must be > 0 (the policy's standard deviation)")
    _require(s.lr_mu >= 0, "sampler.lr_mu", s.lr_mu, "it must be >= 0 (0: best of K, no learned mean)")
    _require(0 < s.mean_fraction <= 1, "sampler.mean_fraction", s.mean_fraction,
             "it must be in (0, 1]: the share of blocks with a learned mean")
    _require(s.cosine_every >= 0, "sampler.cosine_every", s.cosine_every, "it must be >= 0 (0: never)")


def validate_metatrain(cfg: DictConfig) -> None:
    """The meta-training keys; the rest of the config is checked by validate()."""
    m = cfg.metatrain
    _require(m.epochs >= 1, "metatrain.epochs", m.epochs, "it must be >= 1")
    _require(m.epochs_per_restart >= 1, "metatrain.epochs_per_restart", m.epochs_per_restart, "it must be >= 1")
    _require(m.eta_meta > 0, "metatrain.eta_meta", m.eta_meta, "it must be > 0")
    _require(m.lr_mlp > 0, "metatrain.lr_mlp", m.lr_mlp, "it must be > 0")
    _require(m.eps > 0, "metatrain.eps", m.eps, "it must be > 0")
    _require(m.log_every >= 1, "metatrain.log_every", m.log_every, "it must be >= 1")
    if cfg.estimator.name not in ("fo-sgd", "fo-adam"):
        raise ConfigError(f"the teacher trajectory is first-order: estimator=fo-sgd (the paper's, momentum 0.8) or "
                          f"fo-adam; got estimator={cfg.estimator.name}")
    if cfg.kernels == KernelBackend.triton:
        raise ConfigError("meta-training regenerates z with the torch reference generator for its meta-gradient; "
                          "use kernels=torch or auto")


def _validate_pertnn(s: DictConfig) -> None:
    _require(s.embed_tokens >= 1, "sampler.embed_tokens", s.embed_tokens, "it must be >= 1")
    _require(s.batch_size >= 1, "sampler.batch_size", s.batch_size, "it must be >= 1")
    _require(s.log_every >= 1, "sampler.log_every", s.log_every, "it must be >= 1")
    for rule in s.rename:
        _require("=>" in rule, "sampler.rename", rule, "each rule is 'REGEX=>REPLACEMENT'")


def _validate_estimator(est: DictConfig) -> None:
    """Ranges of the estimator fields; a field is checked where the estimator's schema has it."""
    _require(est.lr > 0, "estimator.lr", est.lr, "it must be > 0")
    _require(est.weight_decay >= 0, "estimator.weight_decay", est.weight_decay, "it must be >= 0")
    _require(est.warmup_steps >= 0, "estimator.warmup_steps", est.warmup_steps, "it must be >= 0")
    _require(0 <= est.min_lr_ratio <= 1, "estimator.min_lr_ratio", est.min_lr_ratio, "it must be in [0, 1]")
    rules = {
        "eps": (lambda x: x > 0, "it must be > 0"),
        "q": (lambda x: x >= 1, "it must be >= 1"),
        "momentum": (lambda x: 0 <= x < 1, "it must be in [0, 1)"),
        "beta1": (lambda x: 0 <= x < 1, "it must be in [0, 1)"),
        "beta2": (lambda x: 0 <= x < 1, "it must be in [0, 1)"),
        "adam_eps": (lambda x: x > 0, "it must be > 0"),
        "hessian_smooth": (lambda x: 0 <= x <= 1, "it must be in [0, 1] (the EMA rate of the Hessian estimate)"),
        "rank": (lambda x: x >= 1, "it must be >= 1"),
        "interval": (lambda x: x >= 1, "it must be >= 1 (steps a V is kept)"),
        "max_grad_norm": (lambda x: x >= 0, "it must be >= 0 (0: no clip)"),
    }
    for key, (ok, rule) in rules.items():
        if key in est:
            _require(ok(est[key]), f"estimator.{key}", est[key], rule)
