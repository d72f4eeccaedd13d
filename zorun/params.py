"""The trainable tensors as ZO sees them: blocks (one per tensor) grouped into layers.

A block is one trainable tensor; tied weights appear once. A layer is a
transformer block index, with the embeddings as one layer and everything
else (final norm, head) as the last one, following AdaLeZO's grouping by
parameter name. Only :mod:`zorun.kernels` writes through a ParamSpace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List

import torch

_LAYER_RE = re.compile(r"\.(?:layers|h|block|blocks)\.(\d+)(?:\.|$)")
_EMBED_RE = re.compile(r"embed|wte|wpe")


def is_decayed(name: str, tensor: torch.Tensor) -> bool:
    """Weight decay applies to matrices, never to biases or norm weights."""
    lname = name.lower()
    return tensor.ndim >= 2 and "norm" not in lname and not lname.endswith(".bias")


@dataclass
class Block:
    id: int
    name: str
    tensor: torch.Tensor
    layer: int
    decay: bool

    @property
    def numel(self) -> int:
        return self.tensor.numel()


class ParamSpace:
    """The trainable blocks of a model, their layers, dtypes and devices."""

    def __init__(self, named_params):
        seen: Dict[int, str] = {}
        raw = []
        for name, p in named_params:
            if not p.requires_grad or id(p) in seen:
                continue
            seen[id(p)] = name
            raw.append((name, p))
        if not raw:
            raise ValueError("the model has no trainable parameters")
        layer_of = self._layer_ids([n for n, _ in raw])
        self.blocks: List[Block] = [
            Block(i, n, p, layer_of[n], is_decayed(n, p)) for i, (n, p) in enumerate(raw)
        ]
        self.num_layers = max(b.layer for b in self.blocks) + 1
        self.layer_blocks: List[List[int]] = [[] for _ in range(self.num_layers)]
        for b in self.blocks:
            self.layer_blocks[b.layer].append(b.id)

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> "ParamSpace":
        return cls(model.named_parameters())

    @staticmethod
    def _layer_ids(names: List[str]) -> Dict[str, int]:
        """embed -> 0, transformer block i -> 1 + rank of i, the rest -> last."""
        index = {}
        for n in names:
            m = _LAYER_RE.search("." + n)
            if m:
                index[n] = int(m.group(1))
        ranks = {i: r for r, i in enumerate(sorted(set(index.values())))}
        has_embed = any(_EMBED_RE.search(n) and n not in index for n in names)
        offset = 1 if has_embed else 0
        tail = offset + len(ranks)
        out = {}
        for n in names:
            if n in index:
                out[n] = offset + ranks[index[n]]
            elif _EMBED_RE.search(n):
                out[n] = 0
            else:
                out[n] = tail
        # drop the tail layer id if nothing lives there
        used = sorted(set(out.values()))
        remap = {old: new for new, old in enumerate(used)}
        return {n: remap[i] for n, i in out.items()}

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def numel(self) -> int:
        return sum(b.numel for b in self.blocks)

    @property
    def nbytes(self) -> int:
        return sum(b.numel * b.tensor.element_size() for b in self.blocks)

    def all_blocks(self) -> torch.Tensor:
        return torch.arange(len(self.blocks), dtype=torch.long)

    def snapshot(self) -> List[torch.Tensor]:
        """Copies of every block (tests and exact restores only: costs a full copy)."""
        return [b.tensor.detach().clone() for b in self.blocks]
