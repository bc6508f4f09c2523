import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for tiny_models

from tiny_models import make_tokenizer, save_tiny_trio  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory, tiny_tokenizer):
    """HF directories of tiny random models: llama, gpt2, and a second llama (separate reward backbone)."""
    return save_tiny_trio(tmp_path_factory.mktemp("tiny"), tiny_tokenizer)


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
