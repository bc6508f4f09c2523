"""A preallocated KV cache with slot bookkeeping for left-padded batches and depth-1 candidate trees.

Slots [0, length) hold committed tokens (left padding included, masked out via `valid`). Candidate expansion
writes k query tokens into scratch slots [length, length + k); each attends to the valid committed slots and to
itself only. `commit(chosen)` moves the chosen candidate's K/V into slot `length` and drops the rest, so the
cache never holds k copies of the prefix.
"""
from __future__ import annotations

import torch
from transformers import StaticCache


class KVCache:
    def __init__(self, config, batch: int, capacity: int, device, dtype):
        self.hf = StaticCache(config=config, max_cache_len=capacity)
        self.capacity = capacity
        self.length = 0
        self.valid = torch.zeros(batch, capacity, dtype=torch.bool, device=device)  # [B, S]
        self.dtype = dtype
        self._neg = torch.finfo(dtype).min
        self._arange = torch.arange(capacity, device=device)

    def _additive(self, allowed: torch.Tensor) -> torch.Tensor:
        """bool [B, q, S] -> additive float mask [B, 1, q, S] (works for eager and SDPA attention)."""
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=allowed.device)
        return mask.masked_fill_(~allowed, self._neg).unsqueeze(1)

    def _need(self, q: int):
        if self.length + q > self.capacity:
            raise RuntimeError(f"KV cache overflow: {self.length} + {q} slots > capacity {self.capacity}")

    def prefill_mask(self, pad_mask: torch.Tensor) -> torch.Tensor:
        """pad_mask [B, P] bool (True = real token) -> causal additive mask [B, 1, P, S] for slots [0, P)."""
        B, P = pad_mask.shape
        self._need(P)
        causal = self._arange[None, :] <= self._arange[:P, None]  # [P, S]
        real = torch.zeros_like(self.valid)
        real[:, :P] = pad_mask
        allowed = causal[None] & real[:, None, :]  # [B, P, S]
        # A pad query would attend to nothing (NaN in SDPA); let it see itself. Its output is never used.
        allowed[:, torch.arange(P), torch.arange(P)] = True
        return self._additive(allowed)

    def tree_mask(self, q: int) -> torch.Tensor:
        """Mask for q tokens at scratch slots [length, length + q), each seeing the committed prefix and itself.

        q = 1 is an ordinary decode step; q = k is a depth-1 candidate tree. -> [B, 1, q, S]
        """
        self._need(q)
        prefix = self.valid & (self._arange < self.length)  # [B, S]
        own = self._arange[None, :] == (self.length + torch.arange(q, device=self.valid.device))[:, None]  # [q, S]
        return self._additive(prefix[:, None, :] | own[None])

    def advance(self, q: int, real: torch.Tensor | None = None):
        """Commit q tokens just written at [length, length + q); real [B, q] marks which are not padding."""
        self.valid[:, self.length:self.length + q] = True if real is None else real
        self.length += q

    def commit(self, chosen: torch.Tensor, q: int):
        """Keep candidate `chosen[b]` of the q written at [length, length + q) in slot `length`; drop the others.

        chosen [B] int64. Copies one token's K/V per layer and row; the prefix is never copied.
        """
        rows = torch.arange(chosen.shape[0], device=chosen.device)
        src = self.length + chosen  # [B]
        for layer in self.hf.layers:
            layer.keys[:, :, self.length] = layer.keys[rows, :, src]
            layer.values[:, :, self.length] = layer.values[rows, :, src]
            layer.crop(-(q - 1))  # the next write lands right after the kept token
        self.valid[:, self.length] = True
        self.length += 1

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.hf.layers
                   if getattr(layer, "is_initialized", False) for t in (layer.keys, layer.values))
