"""A preallocated KV cache with slot bookkeeping for left-padded batches and depth-1 candidate trees.

Slots [0, length) hold committed tokens (left padding included, masked out). Candidate expansion writes k query
tokens into scratch slots [length, length + k); each attends to the valid committed slots and to itself only.
`commit(chosen)` moves the chosen candidate's K/V into slot `length` and drops the rest, so the cache never
holds k copies of the prefix.

Two storages, chosen by the model that drives the cache:
- "tensor": one tensor kv [L, 2, B, Hkv, S, D] written by the fast Llama-family forward
  (models/fast_llama.py). Masks cover only the slots in use ([0, length + q)), because that forward attends
  over exactly those; a commit is one indexed copy over all layers.
- "hf": an HF `StaticCache` for every other architecture, driven by HF's own forward. Masks cover the whole
  capacity S, because HF attends over the whole static cache.
"""
from __future__ import annotations

import torch
from transformers import StaticCache

STORAGES = ("tensor", "hf")


class KVCache:
    def __init__(self, config, batch: int, capacity: int, device, dtype, storage: str = "hf"):
        if storage not in STORAGES:
            raise ValueError(f"unknown KV cache storage {storage!r}; choose one of {STORAGES}")
        self.config = config
        self.storage = storage
        self.capacity = capacity
        self.length = 0
        self.dtype = dtype
        self._neg = torch.finfo(dtype).min
        self._arange = torch.arange(capacity, device=device)
        # Additive mask of the committed slots kept up to date in place ([B, S]: 0 = valid, min = padding or
        # not yet written), so a step's mask is a slice of it plus the new tokens' own slots.
        self._bias = torch.full((batch, capacity), self._neg, dtype=dtype, device=device)
        self.hf = None
        self.kv = None
        if storage == "hf":
            self.hf = StaticCache(config=config, max_cache_len=capacity)
        else:
            heads = int(config.num_attention_heads)
            head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
            self.kv = torch.zeros(int(config.num_hidden_layers), 2, batch, int(config.num_key_value_heads),
                                  capacity, head_dim, dtype=dtype, device=device)

    def check_room(self, q: int):
        """Raise unless q more slots fit after the committed ones."""
        if self.length + q > self.capacity:
            raise RuntimeError(f"KV cache overflow: {self.length} + {q} slots > capacity {self.capacity}")

    def _width(self, q: int) -> int:
        """Key slots a forward of q new tokens attends over (see the module docstring)."""
        return self.length + q if self.storage == "tensor" else self.capacity

    def prefill_mask(self, pad_mask: torch.Tensor) -> torch.Tensor:
        """pad_mask [B, P] bool (True = real token) -> causal additive mask [B, 1, P, T] for slots [0, P)."""
        B, P = pad_mask.shape
        if self.length:
            raise RuntimeError("prefill_mask is for the first forward into an empty cache")
        self.check_room(P)
        T = self._width(P)
        causal = self._arange[None, :T] <= self._arange[:P, None]  # [P, T]
        real = torch.zeros(B, T, dtype=torch.bool, device=pad_mask.device)
        real[:, :P] = pad_mask
        allowed = causal[None] & real[:, None, :]  # [B, P, T]
        # A pad query would attend to nothing (NaN in SDPA); let it see itself. Its output is never used.
        allowed[:, torch.arange(P), torch.arange(P)] = True
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=allowed.device)
        return mask.masked_fill_(~allowed, self._neg).unsqueeze(1)

    def tree_mask(self, q: int) -> torch.Tensor:
        """Mask for q tokens at scratch slots [length, length + q), each seeing the committed prefix and itself.

        q = 1 is an ordinary decode step; q = k is a depth-1 candidate tree. -> [B, 1, q, T]
        """
        self.check_room(q)
        T = self._width(q)
        mask = self._bias[:, None, :T].repeat(1, q, 1)  # [B, q, T]; scratch slots are still masked
        own = torch.arange(q, device=mask.device)
        mask[:, own, self.length + own] = 0
        return mask.unsqueeze(1)

    def advance(self, q: int, real: torch.Tensor | None = None):
        """Commit q tokens just written at [length, length + q); real [B, q] marks which are not padding."""
        new = self._bias[:, self.length:self.length + q]
        if real is None:
            new.zero_()
        else:
            new.copy_(torch.where(real, 0.0, self._neg))
        self.length += q

    def commit(self, chosen: torch.Tensor, q: int):
        """Keep candidate `chosen[b]` of the q written at [length, length + q) in slot `length`; drop the others.

        chosen [B] int64. Copies one token's K/V per layer and row; the prefix is never copied.
        """
        rows = torch.arange(chosen.shape[0], device=chosen.device)
        src = self.length + chosen  # [B]
        if self.kv is not None:
            # kv[:, :, rows, :, src] gathers [B, L, 2, Hkv, D] (advanced indices first): one copy for all layers
            self.kv[:, :, :, :, self.length] = self.kv[:, :, rows, :, src].permute(1, 2, 0, 3, 4)
        else:
            for layer in self.hf.layers:
                layer.keys[:, :, self.length] = layer.keys[rows, :, src]
                layer.values[:, :, self.length] = layer.values[rows, :, src]
                if q > 1:  # the next write lands right after the kept token. Never crop(0): in HF's cache
                    layer.crop(-(q - 1))  # layers a non-negative crop keeps the first n tokens (0 = none)
        self._bias[:, self.length] = 0
        self.length += 1

    # -- static shapes (rgd_engine/graph_step.py) --------------------------------------------------------------
    # A CUDA graph replays fixed shapes and addresses, so these take the length as a device scalar `length` (0-dim
    # int64) that the graphed step advances itself, and cover the whole capacity S. They leave the host's
    # `self.length` to the caller (`host_commit`), since a replay runs no Python.
    def static_mask(self, length: torch.Tensor, q: int) -> torch.Tensor:
        """tree_mask over the whole capacity: -> [B, 1, q, S]; query i sees the committed slots [0, length) that
        are not padding, and its own slot length + i."""
        committed = self._bias.masked_fill(self._arange >= length, self._neg)  # [B, S]
        own = self._arange[None, :] == length + self._arange[:q, None]  # [q, S]
        return committed[:, None, :].masked_fill(own[None], 0).unsqueeze(1)

    def static_slots(self, length: torch.Tensor, q: int) -> torch.Tensor:
        """-> [q] int64: the slots length + [0, q) that q new tokens are written at."""
        return length + self._arange[:q]

    def static_commit(self, chosen: torch.Tensor, length: torch.Tensor):
        """commit(chosen, q) at the device length: candidate chosen[b] (written at slot length + chosen[b]) moves
        to slot `length`, which joins the prefix. chosen [B] int64. Tensor storage only (the fast forward's)."""
        rows = self._arange[:chosen.shape[0]]
        kept = self.kv[:, :, rows, :, length + chosen]  # [B, L, 2, Hkv, D] (advanced indices first)
        self.kv.index_copy_(4, length.view(1), kept.permute(1, 2, 0, 3, 4).unsqueeze(4))
        self.mark_committed(length)

    def mark_committed(self, length: torch.Tensor):
        """Slot `length` (device scalar) holds a real token now: later masks let every row see it."""
        self._bias.index_fill_(1, length.view(1), 0)

    def host_commit(self):
        """A static step committed one token at the device length: the host's length follows (no device read)."""
        self.length += 1

    def select_rows(self, index: torch.Tensor):
        """Rebuild the batch from rows `index` [B'] (repeats allowed): best-of-N fans rows out N-fold and copies
        each group's winner over its losers. One gather of the whole cache; the batch size may change."""
        index = index.to(self._bias.device)
        self._bias = self._bias[index]
        if self.kv is not None:
            self.kv = self.kv[:, :, index]
        else:
            for layer in self.hf.layers:
                if getattr(layer, "is_initialized", False):
                    layer.keys, layer.values = layer.keys[index], layer.values[index]
                    layer.batch_size = index.shape[0]

    @classmethod
    def from_rows(cls, sources: list[tuple["KVCache", int, int]], capacity: int) -> "KVCache":
        """A new cache whose row i holds the last n_i committed slots of row r_i of cache c_i, for
        sources = [(c_i, r_i, n_i)] (all of one model), right-aligned so that every row ends at
        length = max n_i; the slots left of a row's n_i are masked like left padding.

        Continuous batching (rgd_engine/serve) uses it to admit rows prefilled alone into a running batch and to drop
        finished rows and the leading slots no remaining row uses. Copies each kept row's slots once."""
        first = sources[0][0]
        length = max(n for _, _, n in sources)
        if length > capacity:
            raise RuntimeError(f"KV cache overflow: {length} committed slots > capacity {capacity}")
        new = cls(first.config, len(sources), capacity, first._bias.device, first.dtype, first.storage)
        new.length = length
        for i, (src, r, n) in enumerate(sources):
            new._bias[i, length - n:length] = src._bias[r, src.length - n:src.length]
        if new.kv is not None:
            for i, (src, r, n) in enumerate(sources):
                new.kv[:, :, i, :, length - n:length] = src.kv[:, :, r, :, src.length - n:src.length]
            return new
        for j, layer in enumerate(new.hf.layers):
            ref = first.hf.layers[j]
            shape = (len(sources), ref.keys.shape[1], 1)
            layer.lazy_initialization(ref.keys.new_zeros((*shape, ref.keys.shape[3])),
                                      ref.values.new_zeros((*shape, ref.values.shape[3])))
            for i, (src, r, n) in enumerate(sources):
                layer.keys[i, :, length - n:length] = src.hf.layers[j].keys[r, :, src.length - n:src.length]
                layer.values[i, :, length - n:length] = src.hf.layers[j].values[r, :, src.length - n:src.length]
            layer.cumulative_length.fill_(length)  # HF writes the next token's K/V at this slot
        return new

    def nbytes(self) -> int:
        if self.kv is not None:
            return self.kv.numel() * self.kv.element_size()
        return sum(t.numel() * t.element_size() for layer in self.hf.layers
                   if getattr(layer, "is_initialized", False) for t in (layer.keys, layer.values))
