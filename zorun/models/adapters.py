"""model.peft=lora|prefix: wrap the model with a peft adapter, so that ZO trains the adapter alone.

peft freezes the base model, so :class:`zorun.params.ParamSpace` (which takes
the parameters with ``requires_grad``) holds only the adapter tensors. LoRA's
A and B matrices sit inside the transformer blocks they adapt, so they get
those blocks' layer ids as they are. A prefix is one [tokens, layers·2·hidden]
embedding that spans every layer; :class:`LayerwisePrefix` stores it as one
tensor per layer instead (the same numbers, the same forward), so that
layer-wise samplers (adalezo) can perturb one layer's prefix at a time.

Defaults are MeZO's (Malladi et al. 2023, Appendix E): LoRA r 8, α 16 on the
attention query and value projections (peft's per-architecture default
target modules: q_proj/v_proj for OPT, Llama, Qwen, Mistral; c_attn for
GPT-2), prefix tuning with 5 virtual tokens, initialised as MeZO's
``--prefix_init_by_real_act`` (model.prefix.init=real_activations): the keys
and values each layer computes for 5 random vocabulary ids, run through the
model. model.prefix.init=random keeps peft's random start.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from peft import LoraConfig, PeftModel, PrefixTuningConfig, get_peft_model

from zorun.errors import ZorunError

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"  # <run dir>/adapter: the trained adapter, as peft's save_pretrained writes it


class LayerwisePrefix(torch.nn.Module):
    """peft's prefix embedding as one parameter per transformer layer (layers.l: [tokens, 2·hidden]).

    peft reads the prefix of layer l from columns [l·2h, (l+1)·2h) of its
    embedding (keys then values); ``weight`` puts the pieces back in that
    order, so peft's forward, save_pretrained and a plain PrefixEncoder
    loaded from the saved adapter all see the same tensor.
    """

    def __init__(self, embedding: torch.nn.Embedding, num_layers: int):
        super().__init__()
        chunks = embedding.weight.detach().chunk(num_layers, dim=1)
        self.layers = torch.nn.ParameterList([torch.nn.Parameter(c.clone()) for c in chunks])

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat(list(self.layers), dim=1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)

    @torch.no_grad()
    def load_layers(self, layers: List[torch.Tensor]) -> None:
        for mine, value in zip(self.layers, layers, strict=True):
            mine.copy_(value)


def _layer_cache(cache, layer: int):
    """(keys, values) of one layer: transformers' layered caches, or the older per-layer tuples."""
    if hasattr(cache, "layers"):
        return cache.layers[layer].keys, cache.layers[layer].values
    return cache[layer]


@torch.no_grad()
def real_activations(model: torch.nn.Module, num_tokens: int, seed: int):
    """(token ids, per layer [tokens, keys | values]): `num_tokens` random vocabulary ids run through `model`.

    The ids are drawn uniformly from the model's vocabulary with a generator
    seeded by the run seed; each layer's keys and values for them (heads
    side by side, as peft lays a prefix out) are what MeZO's prefix starts
    from. Keys carry their positions 0..tokens-1, where the prefix sits.
    """
    ids = torch.randint(0, model.config.vocab_size, (1, num_tokens), generator=torch.Generator().manual_seed(seed))
    model.eval()  # no dropout in the activations
    out = model(input_ids=ids.to(model.get_input_embeddings().weight.device), use_cache=True)
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    layers = []
    for layer in range(model.config.num_hidden_layers):
        keys, values = _layer_cache(cache, layer)  # [1, kv heads, tokens, head dim]
        layers.append(torch.cat([t[0].transpose(0, 1).reshape(num_tokens, -1) for t in (keys, values)], dim=1))
    return ids[0].tolist(), layers


def peft_kind(cfg: DictConfig) -> str:
    return str(getattr(cfg.peft, "value", cfg.peft))


def wrap(model: torch.nn.Module, cfg: DictConfig, seed: int) -> torch.nn.Module:
    """The model with the configured adapter (model.peft), initialised from the run seed; as is for none."""
    kind = peft_kind(cfg)
    if kind == "none":
        return model
    torch.manual_seed(seed)  # adapter init (LoRA's A, the prefix) is reproducible, whatever loaded the base
    if kind == "prefix" and str(getattr(cfg.prefix.init, "value", cfg.prefix.init)) == "real_activations":
        init_ids, activations = real_activations(model, cfg.prefix.num_virtual_tokens, seed)
    if kind == "lora":
        targets = OmegaConf.to_container(cfg.lora.target_modules) if cfg.lora.target_modules else None
        config = LoraConfig(task_type="CAUSAL_LM", r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                            lora_dropout=cfg.lora.dropout, target_modules=targets)
    else:
        config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.prefix.num_virtual_tokens)
    try:
        wrapped = get_peft_model(model, config)
    except ValueError as err:  # e.g. no default target modules for this architecture, or a name that matches nothing
        first = str(err).split("\n")[0]
        raise ZorunError(f"model.peft={kind} does not apply to model={cfg.name} ({first}); set "
                         f"model.lora.target_modules=[...] to module names of this architecture") from err
    if kind == "prefix":
        encoder = wrapped.prompt_encoder[wrapped.active_adapter]
        encoder.embedding = LayerwisePrefix(encoder.embedding, wrapped.active_peft_config.num_layers)
        if str(getattr(cfg.prefix.init, "value", cfg.prefix.init)) == "real_activations":
            encoder.embedding.load_layers(activations)
            encoder.embedding.init_ids = init_ids  # which vocabulary ids the prefix started from
            log.info("prefix initialised from the activations of token ids %s", init_ids)
    return wrapped


def save_adapter(model: torch.nn.Module, run_dir: Path) -> Path | None:
    """Write a peft model's adapter to <run dir>/adapter (PeftModel.from_pretrained reads it back); else None."""
    if not isinstance(model, PeftModel):
        return None
    out = Path(run_dir) / ADAPTER_DIR
    model.save_pretrained(str(out))
    return out
