"""PertNN's networks and their files: safetensors + JSON metadata, the block-name mapping, the importer.

A checkpoint is one ``.safetensors`` file. Tensor ``"<block>.<key>"`` is the
state of block <block>'s network as an nn.Sequential(Linear(5, 64), Tanh,
Linear(64, 1)) (keys 0.weight, 0.bias, 2.weight, 2.bias); the header's
``__metadata__["zorun_pertnn"]`` is JSON:

    {"format": "zorun-pertnn", "version": 1, "base_model": "facebook/opt-30b",
     "blocks": [{"name": ..., "shape": [...] or null}, ...], "features": [...FEATURES],
     "hidden": 64, "normalisation": {"normalize": true, "embed_tokens": 15}, "source": "metatrain" | "import"}

Loading reads the header and tensors with safetensors only (no pickle).
Model block names are rewritten by ``sampler.rename`` rules ("REGEX=>REPLACEMENT",
Python ``re.sub``, applied in order) before the lookup, so networks trained on
a base model serve its derivatives, e.g. a peft-wrapped model
(``^base_model\\.model\\.=>`` and ``\\.base_layer\\.=>.``).

``zorun-pertnn import SRC.pth OUT.safetensors --trust-pickle`` converts the
authors' released checkpoints (a pickled ``dict name -> nn.Sequential``); a
pickle can run code when loaded, so it refuses without the flag.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from zorun.errors import ZorunError
from zorun.params import ParamSpace

FEATURES = ("mean", "var", "loss_plus", "loss_minus", "sigma_prev")
HIDDEN = 64
FORMAT, VERSION = "zorun-pertnn", 1
META_KEY = "zorun_pertnn"
KEYS = {"0.weight": (HIDDEN, len(FEATURES)), "0.bias": (HIDDEN,), "2.weight": (1, HIDDEN), "2.bias": (1,)}
SHOWN = 6  # names listed per kind in a mismatch message


class BlockNets(nn.Module):
    """n independent Linear(5, 64)–Tanh–Linear(64, 1)–abs networks evaluated as one batched op.

    Network b is the nn.Sequential with state {"0.weight": w1[b], "0.bias": b1[b],
    "2.weight": w2[b:b+1], "2.bias": b2[b:b+1]}, the layout of the released checkpoints.
    """

    def __init__(self, n: int, hidden: int = HIDDEN, generator: Optional[torch.Generator] = None):
        super().__init__()
        k = len(FEATURES)
        self.w1 = nn.Parameter(torch.empty(n, hidden, k))
        self.b1 = nn.Parameter(torch.empty(n, hidden))
        self.w2 = nn.Parameter(torch.empty(n, hidden))
        self.b2 = nn.Parameter(torch.empty(n))
        with torch.no_grad():  # nn.Linear's default init: U(±1/sqrt(fan_in)) for weight and bias
            for p, fan_in in ((self.w1, k), (self.b1, k), (self.w2, hidden), (self.b2, hidden)):
                p.uniform_(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), generator=generator)

    def __len__(self) -> int:
        return self.w1.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (n, 5) features, one row per block -> σ: (n,)."""
        h = torch.tanh(torch.einsum("nhk,nk->nh", self.w1, x) + self.b1)
        return ((h * self.w2).sum(-1) + self.b2).abs()

    def block_state(self, b: int) -> Dict[str, torch.Tensor]:
        """Network b as an nn.Sequential(Linear, Tanh, Linear) state dict."""
        return {"0.weight": self.w1[b].detach(), "0.bias": self.b1[b].detach(),
                "2.weight": self.w2[b : b + 1].detach(), "2.bias": self.b2[b : b + 1].detach()}

    def load_block_state(self, b: int, state: Dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.w1[b].copy_(state["0.weight"])
            self.b1[b].copy_(state["0.bias"])
            self.w2[b].copy_(state["2.weight"].reshape(-1))
            self.b2[b].copy_(state["2.bias"].reshape(()))

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())


class PertNNCheckpointError(ZorunError):
    """A networks file that cannot serve this model; the message is one line."""


SHIPPED = Path(__file__).resolve().parent.parent / "networks"  # networks that ship with zorun (the default model's)


def locate(path) -> Path:
    """`path`, or, for a relative pertnn/NAME.safetensors absent from the working directory, zorun's own copy.

    The default ``sampler.checkpoint`` is ``pertnn/${model.name}.safetensors``;
    zorun ships networks for its default model (``zorun/networks/tiny.safetensors``,
    meta-trained with ``zorun-metatrain``), so ``zorun sampler=pertnn`` runs out of
    the box. A file in the working directory always wins.
    """
    path = Path(path)
    shipped = SHIPPED / path.name
    if not path.is_file() and not path.is_absolute() and path.parent == Path("pertnn") and shipped.is_file():
        return shipped
    return path


def check_exists(path) -> None:
    """One line naming the missing networks file and how to make it (pre-flight, before any model loads)."""
    if not locate(path).is_file():
        raise PertNNCheckpointError(f"sampler.checkpoint={path} does not exist; meta-train networks with "
                                    f"zorun-metatrain, import released ones with zorun-pertnn import, or set the path")


def save(path, nets: BlockNets, names: Sequence[str], shapes: Sequence[Optional[Sequence[int]]],
         base_model: str, source: str, normalize: bool = True, embed_tokens: int = 15) -> Path:
    meta = {"format": FORMAT, "version": VERSION, "base_model": base_model,
            "blocks": [{"name": n, "shape": None if s is None else list(s)} for n, s in zip(names, shapes)],
            "features": list(FEATURES), "hidden": HIDDEN,
            "normalisation": {"normalize": bool(normalize), "embed_tokens": int(embed_tokens)}, "source": source}
    tensors = {f"{name}.{key}": t.float().contiguous().clone()
               for b, name in enumerate(names) for key, t in nets.block_state(b).items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={META_KEY: json.dumps(meta)})
    return path


def read(path) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """(metadata, tensors) of a networks file; any problem is one line naming the file."""
    check_exists(path)
    path = locate(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise PertNNCheckpointError(f"{path} is not a safetensors file ({err}); PertNN networks are stored as "
                                    f"safetensors (convert released .pth files with zorun-pertnn import)") from err
    try:
        meta = json.loads(header[META_KEY])
    except (KeyError, json.JSONDecodeError) as err:
        raise PertNNCheckpointError(f"{path} has no '{META_KEY}' JSON metadata; it was not written by zorun "
                                    f"(zorun-metatrain or zorun-pertnn import)") from err
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise PertNNCheckpointError(f"{path} is format {meta.get('format')} version {meta.get('version')}; this zorun "
                                    f"reads {FORMAT} version {VERSION}")
    if meta.get("features") != list(FEATURES) or meta.get("hidden") != HIDDEN:
        raise PertNNCheckpointError(f"{path} has features {meta.get('features')} and hidden size {meta.get('hidden')}; "
                                    f"zorun's networks take {list(FEATURES)} with hidden size {HIDDEN}")
    for entry in meta["blocks"]:
        for key, shape in KEYS.items():
            t = tensors.get(f"{entry['name']}.{key}")
            if t is None or tuple(t.shape) != shape:
                raise PertNNCheckpointError(f"{path}: network '{entry['name']}' lacks {key} of shape {shape} "
                                            f"(got {None if t is None else tuple(t.shape)}); the file is damaged")
    return meta, tensors


def parse_rules(rules: Sequence[str]) -> List[Tuple[re.Pattern, str]]:
    out = []
    for rule in rules:
        pattern, sep, replacement = rule.partition("=>")
        if not sep:
            raise PertNNCheckpointError(f"sampler.rename rule {rule!r} is not 'REGEX=>REPLACEMENT'")
        try:
            out.append((re.compile(pattern), replacement))
        except re.error as err:
            raise PertNNCheckpointError(f"sampler.rename rule {rule!r}: bad regular expression ({err})") from err
    return out


def mapped_name(name: str, rules: Sequence[Tuple[re.Pattern, str]]) -> str:
    for pattern, replacement in rules:
        name = pattern.sub(replacement, name)
    return name


def _listing(names: List[str]) -> str:
    more = f" (+{len(names) - SHOWN} more)" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more if names else "none"


def load_for_space(path, space: ParamSpace, rename: Sequence[str] = ()) -> BlockNets:
    """The networks of `path` in the order of space's blocks, matched by (renamed) block name."""
    meta, tensors = read(path)
    rules = parse_rules(rename)
    wanted = [mapped_name(b.name, rules) for b in space.blocks]
    shapes = {e["name"]: e["shape"] for e in meta["blocks"]}
    missing = [w for w in wanted if w not in shapes]
    extra = sorted(set(shapes) - set(wanted))
    if missing or extra:
        raise PertNNCheckpointError(
            f"{path} (base model {meta.get('base_model')}) does not match the model's {len(wanted)} trainable blocks: "
            f"missing {len(missing)} [{_listing(missing)}]; extra {len(extra)} [{_listing(extra)}]; "
            f"map names with sampler.rename=['REGEX=>REPLACEMENT', ...] (see docs/pertnn.md)")
    for block, name in zip(space.blocks, wanted):
        shape = shapes[name]
        if shape is not None and list(block.tensor.shape) != list(shape):
            raise PertNNCheckpointError(f"{path}: network '{name}' was trained for shape {shape}, the model's "
                                        f"'{block.name}' is {list(block.tensor.shape)}; these networks belong to "
                                        f"another architecture")
    nets = BlockNets(len(space))
    for b, name in enumerate(wanted):
        nets.load_block_state(b, {key: tensors[f"{name}.{key}"] for key in KEYS})
    return nets


# ------------------------------------------------------------------- importer
def import_released(src, out, trust_pickle: bool, base_model: str) -> Path:
    """Convert a pickled dict name -> nn.Sequential(Linear(5, 64), Tanh, Linear(64, 1)) into zorun's format."""
    if not trust_pickle:
        raise ZorunError(f"refusing to load {src}: it is a pickle, and unpickling runs whatever code the file holds; "
                         f"pass --trust-pickle only if you trust where it came from")
    try:
        released = torch.load(str(src), map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, ValueError, AttributeError, ModuleNotFoundError) as err:
        raise ZorunError(f"cannot read {src} as a torch pickle ({type(err).__name__}: {err})") from err
    if not isinstance(released, dict) or not released:
        raise ZorunError(f"{src} holds a {type(released).__name__}, not the released dict of block name -> nn.Sequential")
    names = list(released)
    nets = BlockNets(len(names))
    for b, name in enumerate(names):
        module = released[name]
        state = module.state_dict() if isinstance(module, torch.nn.Module) else None
        shapes = None if state is None else {k: tuple(v.shape) for k, v in state.items()}
        if not isinstance(module, torch.nn.Sequential) or shapes != KEYS or not isinstance(module[1], torch.nn.Tanh):
            raise ZorunError(f"{src}: entry '{name}' is not nn.Sequential(Linear(5, 64), Tanh, Linear(64, 1)) "
                             f"(got {type(module).__name__} with {shapes})")
        nets.load_block_state(b, {k: v.float() for k, v in state.items()})
    return save(out, nets, names, [None] * len(names), base_model=base_model, source="import")
