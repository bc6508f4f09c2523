"""Final-norm hidden states at the last token of whole sequences (reward features), batched without a cache."""
from __future__ import annotations

import torch

from .models import CausalLM


@torch.inference_mode()
def last_token_states(model: CausalLM, seqs: list[list[int]], batch_size: int = 16) -> torch.Tensor:
    """seqs: token ids per sequence -> [N, d] float32 (CPU)."""
    out = torch.empty(len(seqs), model.hidden_size, dtype=torch.float32)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths together: less padding
    pad = model.tokenizer.pad_token_id
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        L = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), L), pad, dtype=torch.int64)
        mask = torch.zeros((len(idx), L), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, :len(seqs[i])] = torch.tensor(seqs[i])
            mask[r, :len(seqs[i])] = 1
        ids, mask = ids.to(model.device), mask.to(model.device)
        hidden = model.base(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state  # [b, L, d]
        last = mask.sum(-1) - 1
        out[idx] = hidden[torch.arange(len(idx), device=model.device), last].float().cpu()
    return out
