"""A thin wrapper over an HF causal LM exposing what the decoder needs.

The decoder drives the *base* transformer (final-norm hidden states out) with explicit positions and a 4D
attention mask against a preallocated KV cache, and applies the LM head itself through the fused
`lmhead_topk` op, so the wrapper exposes the LM head weight separately.
"""
from __future__ import annotations

import torch

from ..errors import ModelLoadError


class CausalLM:
    def __init__(self, hf_model, tokenizer, name: str):
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

    @property
    def lm_head_weight(self) -> torch.Tensor:  # [V, d]
        return self.hf_model.get_output_embeddings().weight

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache) -> torch.Tensor:
        """Run new tokens through the base model and return final-norm hidden states.

        ids [B, q] int64, positions [B, q] int64, mask [B, 1, q, S] additive float (S = cache capacity),
        cache: an HF cache the new K/V are appended to -> hidden [B, q, d].
        """
        out = self.base(input_ids=ids, position_ids=positions, attention_mask=mask, cache=cache, use_cache=True)
        return out.last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits, for the plain sampling path that needs the whole distribution. hidden [B, d] -> [B, V]."""
        return hidden @ self.lm_head_weight.t()
