"""A thin wrapper over an HF causal LM exposing what the decoder needs.

The decoder drives the *base* transformer (final-norm hidden states out) with explicit positions and a 4D
attention mask against a preallocated KV cache, and applies the LM head itself through the fused
`lmhead_topk` op, so the wrapper exposes the LM head weight separately.

Two forwards give the same hidden states (within float rounding; tests/engine/test_fast_forward.py):
- "fast": models/fast_llama.py, for Llama-family models (llama, mistral and qwen2 without sliding windows),
  writing into a plain-tensor KV cache. Its projection weights are fused and stored transposed in place:
  the HF modules keep working on (transposed) slices of the fused tensors, so no weight is stored twice;
  the HF forward of such a model may differ from a freshly loaded one in the last float bits.
- "hf": the HF base model with an HF StaticCache, for every architecture; models with sliding-window layers
  (Gemma 3) get a full-attention cache and per-layer-type masks (models/sliding_window.py).
`RGD_FORWARD=auto|hf|fast` (or `forward=`) picks one: auto = fast where supported, else hf (logged);
an explicit `fast` for an unsupported model raises.
"""
from __future__ import annotations

import logging
import os

import torch

from ..errors import ModelLoadError
from ..kv_cache import KVCache
from .fast_llama import FastLlama, unsupported_reason
from .sliding_window import full_attention_config, layer_masks, sliding_window

log = logging.getLogger("rgd_engine.models")
FORWARDS = ("auto", "hf", "fast")


def requested_forward() -> str:
    return os.environ.get("RGD_FORWARD", "auto").strip().lower() or "auto"


class CausalLM:
    def __init__(self, hf_model, tokenizer, name: str, forward: str | None = None):
        self.hf_model = hf_model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.base = hf_model.base_model
        head = hf_model.get_output_embeddings()
        if head is None or not hasattr(head, "weight"):
            raise ModelLoadError(f"model {name!r} has no linear output embedding (LM head)")
        if getattr(head, "bias", None) is not None:
            raise ModelLoadError(f"model {name!r}: LM heads with a bias are not supported (the fused lmhead_topk has none)")
        self.config = hf_model.config.get_text_config(decoder=True)
        self.hidden_size = int(self.config.hidden_size)
        self.vocab_size = int(head.weight.shape[0])
        self.device = head.weight.device
        self.dtype = head.weight.dtype
        if getattr(self.config, "final_logit_softcapping", None) is not None:
            # the engine applies the LM head itself (lmhead_topk) and would skip the tanh cap
            raise ModelLoadError(f"model {name!r}: final_logit_softcapping is not supported")
        self.window = sliding_window(self.config)
        self.cache_config = self.config if self.window is None else full_attention_config(self.config)
        self.fast = self._pick_forward(forward or requested_forward())

    def _pick_forward(self, forward: str) -> FastLlama | None:
        if forward not in FORWARDS:
            raise ValueError(f"unknown forward {forward!r} (RGD_FORWARD); choose one of {', '.join(FORWARDS)}")
        if forward == "hf":
            return None
        reason = unsupported_reason(self.base, self.config)
        if reason is None:
            return FastLlama(self.base, self.config)
        if forward == "fast":
            raise ModelLoadError(f"model {self.name!r}: the fast forward was requested but {reason}")
        log.info("model %r uses the HF forward: %s", self.name, reason)
        return None

    @property
    def forward_kind(self) -> str:
        return "hf" if self.fast is None else "fast"

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        """An empty KV cache of `capacity` slots per row in the storage this model's forward writes."""
        return KVCache(self.cache_config, batch, capacity, self.device, self.dtype,
                       storage="hf" if self.fast is None else "tensor")

    @property
    def lm_head_weight(self) -> torch.Tensor:  # [V, d]
        return self.hf_model.get_output_embeddings().weight

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Run new tokens through the base model and return final-norm hidden states.

        ids [B, q] int64, positions [B, q] int64, mask [B, 1, q, T] additive float from `cache` (its
        prefill_mask / tree_mask), cache: from `new_cache`; the new K/V land in slots [length, length + q)
        -> hidden [B, q, d]. The caller advances or commits the cache afterwards.
        """
        if self.fast is not None:
            return self.fast.forward(ids, positions, mask, cache.kv, cache.length)
        if self.window is not None:
            mask = layer_masks(mask, self.window)
        out = self.base(input_ids=ids, position_ids=positions, attention_mask=mask, cache=cache.hf, use_cache=True)
        return out.last_hidden_state

    @torch.inference_mode()
    def forward_static(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: KVCache,
                       slots: torch.Tensor) -> torch.Tensor:
        """`forward` at shapes that do not change from step to step (fast forward only; rgd_engine/graph_step.py):
        mask [B, 1, q, S] over the cache's whole capacity (`cache.static_mask`), new K/V written at the device
        slots `slots` [q] int64 -> hidden [B, q, d]."""
        return self.fast.forward_static(ids, positions, mask, cache.kv, slots)

    @torch.inference_mode()
    def masked_forward(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One cache-free HF forward under a custom mask, e.g. a teacher-forced candidate tree.

        ids [B, N] int64, positions [B, N] int64, mask [B, 1, N, N] additive, each query seeing its visible
        keys in position order and itself last (as the KV cache's masks) -> final-norm hidden [B, N, d].
        """
        if self.window is not None:
            mask = layer_masks(mask, self.window)
        return self.base(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=False).last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits, for the plain sampling path that needs the whole distribution. hidden [B, d] -> [B, V]."""
        return hidden @ self.lm_head_weight.t()
