"""Convert a GGUF file once into a safetensors HF model directory, checked to decode like the GGUF model.

transformers loads a GGUF by dequantizing every tensor (slow: seconds to minutes), and refuses
`save_pretrained` on a GGUF-loaded model, so the state dict, config and tokenizer are written separately into
a temp directory next to the target. Before it is renamed into place, the directory is reloaded and must give
the same greedy tokens as the GGUF model on a probe prompt; an interrupted or failed conversion leaves nothing
at the target. Later loads of the directory take about a second.
"""
from __future__ import annotations

import gc
import logging
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import ModelLoadError

log = logging.getLogger("rgd_engine.models")
PROBE_PROMPT = "The capital of France is"
PROBE_TOKENS = 8


@torch.inference_mode()
def greedy_probe(model, tok, n: int = PROBE_TOKENS) -> list[int]:
    """The n greedy tokens HF `generate` continues PROBE_PROMPT with."""
    ids = tok(PROBE_PROMPT, return_tensors="pt")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=pad)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def _write_state(model, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # tied to the embedding; safetensors refuses shared storage
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights written are dequantized fp32
    config.save_pretrained(str(path))
    model.generation_config.save_pretrained(str(path))


def convert_gguf(gguf: Path, target: Path, label: str) -> None:
    """Write the HF directory `target` from `gguf` (model `label`, for messages); target must not exist yet."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s to a safetensors model directory (once; a minute or more for the larger models)",
                gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".convert-{target.name}-"))
    try:
        src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        want = greedy_probe(src, tok)
        _write_state(src, tmp)
        tok.save_pretrained(str(tmp))
        del src  # free the GGUF model before the reload: two fp32 copies of the 1.5B would need 12 GB
        gc.collect()
        reloaded = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32)
        got = greedy_probe(reloaded, AutoTokenizer.from_pretrained(str(tmp)))
        del reloaded
        if want != got:
            raise ModelLoadError(f"model {label!r}: the converted directory decodes {got} but the GGUF {gguf} "
                                 f"decodes {want}; the conversion is wrong, nothing was cached")
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any other
        if target.exists():
            shutil.rmtree(target)  # a directory without model.safetensors: an older, incomplete layout
        tmp.replace(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
