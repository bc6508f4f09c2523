import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for tiny_models

from tiny_models import make_tokenizer, save_tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory, tiny_tokenizer):
    """HF directories of tiny random models: llama, gpt2, and a second llama (separate reward backbone)."""
    root = tmp_path_factory.mktemp("tiny")
    return {
        "llama": save_tiny(root / "llama", "llama", seed=1, tokenizer=tiny_tokenizer),
        "gpt2": save_tiny(root / "gpt2", "gpt2", seed=2, tokenizer=tiny_tokenizer),
        "rm": save_tiny(root / "rm", "llama", seed=3, hidden=48, tokenizer=tiny_tokenizer),
    }


@pytest.fixture(scope="session")
def load():
    from rgd_engine.models import load_causal_lm

    cache = {}

    def _load(path, attn="sdpa"):
        key = (str(path), attn)
        if key not in cache:
            cache[key] = load_causal_lm(str(path), attn_implementation=attn)
        return cache[key]

    return _load
