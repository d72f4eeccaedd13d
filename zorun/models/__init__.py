"""Model presets, Hugging Face loading, random init at real shapes, the built-in tokenizer."""

from zorun.models.loading import load_model, load_tokenizer, resolve_device

__all__ = ["load_model", "load_tokenizer", "resolve_device"]
