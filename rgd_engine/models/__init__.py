"""Model loading: HF directories, GGUF files and the embedded demo model."""
from .causal_lm import CausalLM  # noqa: F401
from .loading import cache_dir, load_causal_lm, parse_dtype  # noqa: F401
from .tokenizer_check import check_same_tokenizer  # noqa: F401
