"""Prompt prefills computed once and shared by every later call that starts from the same prompt.

A `PromptCache` belongs to one model. `get(ids)` returns the prompt's KV cache and the final-norm state of its
last token, from ONE forward of that prompt alone (batch 1, no padding), computed on the first request and
kept (least recently used first out, within `max_bytes`). `stream(prompts, capacity)` assembles a left-padded
batch from those single-row prefills (`KVCache.from_rows`), in place of a batched prefill.

Why single-row: a batched prefill's rounding depends on which prompts share the batch (GEMM blocking, padding).
A prompt prefilled alone has the same bits in every call, so a cached entry and a recomputed one are identical
and a run's outputs do not depend on what the cache held (a resumed run, an eviction, another worker). A study
prefills the same prompt many times (the zero-shot prompt for every decoding rule; the ICL prompt for ICL
generation, the logratio rule's conditioned stream and the candidate trees of policy accuracy): it pays once.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from .kv_cache import KVCache
from .models import CausalLM
from .stream import Stream


@dataclass(frozen=True)
class Prefill:
    cache: KVCache  # one row, exactly len(ids) committed slots
    last_hidden: torch.Tensor  # [d]: final-norm state of the prompt's last token

    @property
    def length(self) -> int:
        return self.cache.length


DEFAULT_MAX_BYTES = 2 << 30


class PromptCache:
    def __init__(self, model: CausalLM, max_bytes: int = DEFAULT_MAX_BYTES):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.model = model
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[int, ...], Prefill] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @torch.inference_mode()
    def get(self, ids: list[int]) -> Prefill:
        """The prefill of prompt `ids` (token ids, non-empty), computed alone on a miss."""
        key = tuple(int(t) for t in ids)
        if not key:
            raise ValueError("cannot prefill an empty prompt (0 tokens)")
        hit = self._entries.get(key)
        if hit is not None:
            self.hits += 1
            self._entries.move_to_end(key)
            return hit
        self.misses += 1
        x = torch.tensor([key], dtype=torch.int64, device=self.model.device)  # [1, P]
        stream = Stream(self.model, x, torch.ones_like(x, dtype=torch.bool), len(key))
        entry = Prefill(stream.cache, stream.last_hidden[0])
        size = entry.cache.nbytes()
        if size <= self.max_bytes:
            while self.nbytes + size > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                self.nbytes -= old.cache.nbytes()
            self._entries[key] = entry
            self.nbytes += size
        return entry

    def stream(self, prompts: list[list[int]], capacity: int) -> Stream:
        """A left-padded batch stream of `prompts` (token ids per row) with `capacity` slots per row, from the
        rows' single-row prefills (as Stream(model, left_pad(prompts)) but with every row's bits independent of
        the batch)."""
        entries = [self.get(p) for p in prompts]
        cache = KVCache.from_rows([(e.cache, 0, e.length) for e in entries], capacity)
        dev = self.model.device
        next_pos = torch.tensor([e.length for e in entries], dtype=torch.int64, device=dev)  # [B]
        return Stream.from_state(self.model, cache, next_pos, torch.stack([e.last_hidden for e in entries]))

    def stats(self) -> dict:
        return {"entries": len(self), "bytes": self.nbytes, "hits": self.hits, "misses": self.misses}
