"""The root schema and the schemas every run shares, registered with Hydra's ConfigStore.

Each YAML file in ``conf/<group>/`` starts its defaults list with
``/schema/<group>/<schema>@_here_``, so OmegaConf checks types, enum values
and unknown keys while Hydra composes. An estimator's or a sampler's schema
lives in its own module (``zorun/estimators/<option>.py``,
``zorun/samplers/<option>.py``) and is stored there. Ranges (lr > 0, ...)
cannot be expressed as types; :func:`validate` checks them before any model
loads, asking each estimator, sampler and task module for its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from zorun.errors import ConfigError, require


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
    auto = "auto"  # Triton for CUDA tensors, numba for CPU tensors, the torch reference where either is missing
    triton = "triton"
    numba = "numba"
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
    path: Optional[str] = None  # task=local: the user's JSONL file; task=analogy: a questions-words.txt
    candidates: List[str] = field(default_factory=list)  # task=local: shared candidates
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    data_files: DataFilesConfig = field(default_factory=DataFilesConfig)  # wins over task.dataset
    icl_demos: int = 0  # in-context demonstrations before each dev/test prompt (MeZO's ICL: 32)
    icl_sampling: IclSampling = IclSampling.per_example  # MeZO's icl.sh: each example's own demonstrations
    options: Dict[str, Any] = field(default_factory=dict)  # task-specific knobs


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
    # where the recipe's values come from (conf/recipe/ESTIMATOR/MODEL.yaml), key by key; an override replaces the value
    defaults_from: Dict[str, Any] = field(default_factory=dict)
    # what a sweeper plugin optimises: a dotted key of summary.json (selected.dev.accuracy, ...); null: the dev
    # metric at the step budget.select chose
    optimized_metric: Optional[str] = None


@dataclass
class MetaTrainConfig:
    """zorun-metatrain (zorun/metatrain.py): PertNN meta-training; defaults are the paper's (docs/pertnn.md)."""

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


def by_peft(full: Any, lora: Any, prefix: Any, *, _root_: DictConfig) -> Any:
    """${zorun.by_peft:FULL,LORA,PREFIX}: a recipe's value for what model.peft trains (conf/recipe/).

    MeZO tunes full-parameter, LoRA and prefix runs with different lr and eps;
    a value set on the command line or in a sweep replaces the interpolation."""
    return {"none": full, "lora": lora, "prefix": prefix}[getattr(_root_.model.peft, "value", _root_.model.peft)]


def recipe_source(key: str, value: Any, source: str, *, _root_: DictConfig) -> str:
    """${zorun.source:KEY,VALUE,SOURCE}: defaults_from's entry for KEY, SOURCE while KEY holds the recipe's VALUE."""
    current = OmegaConf.select(_root_, key)
    current = getattr(current, "value", current)
    return source if current == value else f"override: {current} replaces the recipe's {value} ({source})"


for _name, _resolver in {"zorun.preset": preset_value, "zorun.model_name": model_name,
                         "zorun.by_peft": by_peft, "zorun.source": recipe_source}.items():
    if not OmegaConf.has_resolver(_name):  # saved run configs (.hydra/config.yaml) use them too
        OmegaConf.register_new_resolver(_name, _resolver)


def register_configs() -> None:
    """Store every schema the YAMLs under conf/ compose onto (estimators and samplers store theirs when imported)."""
    # imported here, not at the top: they load torch, which the report does not need
    import zorun.estimators  # noqa: F401
    import zorun.samplers  # noqa: F401

    cs = ConfigStore.instance()
    cs.store(name="zorun_schema", node=RootConfig)
    cs.store(name="zorun_metatrain_schema", node=MetaTrainRootConfig)
    for group, node in {
        "model": ModelConfig,
        "task": TaskConfig,
        "budget": BudgetConfig,
        "logger": LoggerConfig,
    }.items():
        cs.store(group=f"schema/{group}", name="base", node=node)
    cs.store(group="schema/logger", name="wandb", node=WandbLoggerConfig)


def validate(cfg: DictConfig) -> None:
    """Range and combination checks that types cannot express. Raises ConfigError."""
    # The method modules load torch, so they are imported here, not at the top (the report imports this module).
    from zorun.registry import check_estimator, sampler_class
    from zorun.tasks.registry import check_task

    bud, task = cfg.budget, cfg.task
    check_estimator(cfg.estimator)
    require(bud.steps >= 0, "budget.steps", bud.steps, "it must be >= 0")
    require(bud.epochs >= 0, "budget.epochs", bud.epochs, "it must be >= 0 (0: budget.steps counts)")
    require(bud.batch_size >= 1, "budget.batch_size", bud.batch_size, "it must be >= 1")
    require(bud.eval_batch_size >= 1, "budget.eval_batch_size", bud.eval_batch_size, "it must be >= 1")
    require(bud.eval_every >= 0, "budget.eval_every", bud.eval_every, "it must be >= 0 (0: only at start and end)")
    require(bud.log_every >= 1, "budget.log_every", bud.log_every, "it must be >= 1")
    require(bud.time_limit_s >= 0, "budget.time_limit_s", bud.time_limit_s, "it must be >= 0 (0: none)")
    require(bud.checkpoint_every >= 0, "budget.checkpoint_every", bud.checkpoint_every,
            "it must be >= 0 (0: checkpoint only when stopped)")
    require(bud.keep_checkpoints >= 1, "budget.keep_checkpoints", bud.keep_checkpoints, "it must be >= 1")
    require(bud.max_eval_examples >= 0, "budget.max_eval_examples", bud.max_eval_examples, "it must be >= 0 (0: no cap)")
    peft = getattr(cfg.model.peft, "value", cfg.model.peft)
    if bud.save_merged and peft != "lora":
        raise ConfigError(f"budget.save_merged=true merges a LoRA adapter into the weights, and model.peft={peft} "
                          f"has none to merge; drop budget.save_merged or use model.peft=lora")
    require(bud.max_nonfinite_skips >= 1, "budget.max_nonfinite_skips", bud.max_nonfinite_skips, "it must be >= 1")
    for split in ("num_train", "num_dev", "num_test"):
        require(task[split] >= 0, f"task.{split}", task[split], "it must be >= 0")
    require(task.icl_demos >= 0, "task.icl_demos", task.icl_demos, "it must be >= 0")
    if task.icl_sampling == IclSampling.fixed:
        require(task.icl_demos <= task.num_train, "task.icl_demos", task.icl_demos,
                f"task.icl_sampling=fixed shows the first training examples, and task.num_train={task.num_train}")
    require(task.max_new_tokens >= 1, "task.max_new_tokens", task.max_new_tokens, "it must be >= 1")
    require(cfg.model.max_length >= 8, "model.max_length", cfg.model.max_length, "it must be >= 8")
    sampler_class(cfg.sampler.name).check(cfg.sampler)
    _validate_model(cfg.model)
    if cfg.model.init == ModelInit.random and not cfg.model.arch:
        raise ConfigError(f"model.init=random needs model.arch fields, and model={cfg.model.name} has none")
    check_task(task)


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
    require(m.lora.r >= 1, "model.lora.r", m.lora.r, "it must be >= 1")
    require(m.lora.alpha > 0, "model.lora.alpha", m.lora.alpha, "it must be > 0")
    require(0 <= m.lora.dropout < 1, "model.lora.dropout", m.lora.dropout, "it must be in [0, 1)")
    require(m.prefix.num_virtual_tokens >= 1, "model.prefix.num_virtual_tokens", m.prefix.num_virtual_tokens,
            "it must be >= 1")
    if m.device_map is not None:
        require(m.device_map in DEVICE_MAPS, "model.device_map", m.device_map,
                f"choose one of {', '.join(DEVICE_MAPS)} (accelerate's strategies), or null for one device")
        if m.device != "auto":
            raise ConfigError(f"model.device_map={m.device_map} places the model over every visible GPU, so "
                              f"model.device={m.device} cannot apply; drop one of them (CUDA_VISIBLE_DEVICES picks GPUs)")


def validate_metatrain(cfg: DictConfig) -> None:
    """The meta-training keys; the rest of the config is checked by validate()."""
    m = cfg.metatrain
    require(m.epochs >= 1, "metatrain.epochs", m.epochs, "it must be >= 1")
    require(m.epochs_per_restart >= 1, "metatrain.epochs_per_restart", m.epochs_per_restart, "it must be >= 1")
    require(m.eta_meta > 0, "metatrain.eta_meta", m.eta_meta, "it must be > 0")
    require(m.lr_mlp > 0, "metatrain.lr_mlp", m.lr_mlp, "it must be > 0")
    require(m.eps > 0, "metatrain.eps", m.eps, "it must be > 0")
    require(m.log_every >= 1, "metatrain.log_every", m.log_every, "it must be >= 1")
    if cfg.estimator.name not in ("fo-sgd", "fo-adam"):
        raise ConfigError(f"the teacher trajectory is first-order: estimator=fo-sgd (the paper's, momentum 0.8) or "
                          f"fo-adam; got estimator={cfg.estimator.name}")
    if cfg.kernels == KernelBackend.triton:
        raise ConfigError("meta-training regenerates z with the torch reference generator for its meta-gradient; "
                          "use kernels=torch or auto")
