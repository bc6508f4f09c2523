"""Reward features from whole sequences, batched without a cache: the final-norm state at the last token
(sequence-level heads) and the states of every response prefix (token-level heads)."""
from __future__ import annotations

import torch

from .models import CausalLM


def _batches(model: CausalLM, seqs: list[list[int]], batch_size: int):
    """Yield (row indices, final-norm states [b, L, d]) over right-padded batches of similar lengths."""
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
        yield idx, model.base(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                              use_cache=False).last_hidden_state


@torch.inference_mode()
def last_token_states(model: CausalLM, seqs: list[list[int]], batch_size: int = 16) -> torch.Tensor:
    """seqs: token ids per sequence -> [N, d] float32 (CPU)."""
    out = torch.empty(len(seqs), model.hidden_size, dtype=torch.float32)
    for idx, hidden in _batches(model, seqs, batch_size):
        last = torch.tensor([len(seqs[i]) - 1 for i in idx], device=hidden.device)
        out[idx] = hidden[torch.arange(len(idx), device=hidden.device), last].float().cpu()
    return out


@torch.inference_mode()
def prefix_states(model: CausalLM, prompts: list[list[int]], responses: list[list[int]],
                  batch_size: int = 16) -> list[torch.Tensor]:
    """Token-level reward features: for each (x, y), the final-norm states of x o y<t that predict y_t.

    -> one [T_i, d] float32 tensor (CPU) per pair, T_i = len(y_i) >= 1."""
    if any(len(r) == 0 for r in responses) or any(len(p) == 0 for p in prompts):
        raise ValueError("prefix_states needs non-empty prompts and responses")
    seqs = [p + r for p, r in zip(prompts, responses)]
    out: list[torch.Tensor | None] = [None] * len(seqs)
    for idx, hidden in _batches(model, seqs, batch_size):
        for r, i in enumerate(idx):
            P, T = len(prompts[i]), len(responses[i])
            out[i] = hidden[r, P - 1:P + T - 1].float().cpu()
    return out


@torch.inference_mode()
def response_states(model: CausalLM, prompts: list[list[int]], responses: list[list[int]],
                    batch_size: int = 16) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Both features of each (x, y) from ONE forward of x o y: the last-token state [N, d] (= last_token_states)
    and the prefix states [T_i, d] that predict y_t (= prefix_states); float32 on CPU."""
    if any(len(r) == 0 for r in responses) or any(len(p) == 0 for p in prompts):
        raise ValueError("response_states needs non-empty prompts and responses")
    seqs = [p + r for p, r in zip(prompts, responses)]
    last = torch.empty(len(seqs), model.hidden_size, dtype=torch.float32)
    prefix: list[torch.Tensor | None] = [None] * len(seqs)
    for idx, hidden in _batches(model, seqs, batch_size):
        for r, i in enumerate(idx):
            P, T = len(prompts[i]), len(responses[i])
            last[i] = hidden[r, P + T - 1].float().cpu()
            prefix[i] = hidden[r, P - 1:P + T - 1].float().cpu()
    return last, prefix
