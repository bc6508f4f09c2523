"""rgd-engine: reward-guided decoding with fused kernels and a per-user reward-head bank.

The public names below are imported on first use (PEP 562), so that importing a leaf such as
`rgd_engine.kernels` (or the compiled `rgd_engine._C`) does not import the engine and transformers.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "EngineConfig": ".config", "GenerationConfig": ".config",
    "Decoder": ".decoder", "Generation": ".decoder",
    "Engine": ".engine",
    "ConfigError": ".errors", "GenerationInputError": ".errors", "HeadBankError": ".errors",
    "ModelLoadError": ".errors", "PromptTooLongError": ".errors", "RGDError": ".errors",
    "TokenizerMismatchError": ".errors", "UnknownUserError": ".errors",
    "HeadBank": ".heads", "TokenHeadBank": ".heads", "load_bank": ".heads",
    "PromptCache": ".prompt_cache",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rgd_engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
