"""What every decode loop shares (decoder.py, bon_block.py): left-padded prompts, a model's KV-cached stream of
rows, the sampling generator, and the finished rows as `Generation`s."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .models import CausalLM
from .stopping import RowStopper


@dataclass
class Generation:
    text: str | None  # None when the policy has no tokenizer (rgd_engine.hf)
    token_ids: list
    finish_reason: str
    user: str | None = None
    steps: list | None = None  # per-step scores when requested
    kv_bytes: int | None = None  # KV-cache bytes of the whole call (every model's cache, all rows): same in each row


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ids [B, P] int64 and mask [B, P] bool (True = real token), padded on the left."""
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(prompts), P), dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):] = torch.tensor(p, dtype=torch.int64)
        mask[i, P - len(p):] = True
    return ids.to(device), mask.to(device)


class Stream:
    """One model's KV cache plus the next position of every row."""

    def __init__(self, model: CausalLM, ids, pad_mask, capacity: int):
        self.model = model
        self.cache = model.new_cache(ids.shape[0], capacity)
        positions = (pad_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, P]
        hidden = model.forward(ids, positions, self.cache.prefill_mask(pad_mask), self.cache)
        self.cache.advance(ids.shape[1], pad_mask)
        self.last_hidden = hidden[:, -1]  # [B, d]: left padding puts every row's last real token here
        self.next_pos = pad_mask.long().sum(-1)  # [B]

    @classmethod
    def from_state(cls, model: CausalLM, cache, next_pos: torch.Tensor, last_hidden: torch.Tensor) -> "Stream":
        """A stream over an already filled cache (continuous batching assembles its batch from rows prefilled
        alone, see rgd_engine/serve/batch.py). next_pos [B]; last_hidden [B, d]."""
        stream = cls.__new__(cls)
        stream.model, stream.cache, stream.next_pos, stream.last_hidden = model, cache, next_pos, last_hidden
        return stream

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row. tokens [B] -> hidden [B, d]."""
        hidden = self.model.forward(tokens[:, None], self.next_pos[:, None], self.cache.tree_mask(1), self.cache)
        self.cache.advance(1)
        self.next_pos = self.next_pos + 1
        self.last_hidden = hidden[:, 0]
        return self.last_hidden

    def expand(self, cand_ids: torch.Tensor) -> torch.Tensor:
        """Forward k candidates per row as a depth-1 tree. cand_ids [B, k] -> hidden [B, k, d]."""
        k = cand_ids.shape[1]
        pos = self.next_pos[:, None].expand(-1, k)
        return self.model.forward(cand_ids, pos, self.cache.tree_mask(k), self.cache)

    def keep(self, chosen: torch.Tensor, k: int, cand_hidden: torch.Tensor):
        """Keep only candidate chosen[b] in the cache. chosen [B]; cand_hidden [B, k, d]."""
        self.cache.commit(chosen, k)
        self.next_pos = self.next_pos + 1
        self.last_hidden = cand_hidden[torch.arange(chosen.shape[0], device=chosen.device), chosen]


    def select_rows(self, index: torch.Tensor):
        """Keep rows `index` [B'] (repeats allowed) of the cache, positions and last states."""
        self.cache.select_rows(index)
        self.next_pos = self.next_pos[index]
        self.last_hidden = self.last_hidden[index]


def open_stream(model: CausalLM, prompts: list[list[int]], ids: torch.Tensor, pad_mask: torch.Tensor, capacity: int,
                prompt_cache=None) -> Stream:
    """A batch's stream of `model`: from the prompt cache's single-row prefills (rgd_engine/prompt_cache.py; the
    caller checks that it is this model's), else one batched forward of the left-padded ids [B, P] (pad_mask
    [B, P])."""
    if prompt_cache is not None:
        return prompt_cache.stream(prompts, capacity)
    return Stream(model, ids, pad_mask, capacity)


def new_generator(seed: int | None, device) -> torch.Generator:
    """The generator of a call's random draws: seeded when seed is given, else freshly from the OS."""
    gen = torch.Generator(device=device)
    if seed is not None:
        gen.manual_seed(seed)
    else:
        gen.seed()
    return gen


def kv_bytes(streams: list[Stream]) -> int:
    """KV-cache bytes the streams hold (call it after their prefill, at full batch)."""
    return sum(s.cache.nbytes() for s in streams)


def finish(rows: list[RowStopper], users: list | None, steps: list, with_text: bool,
           kv: int | None = None) -> list["Generation"]:
    """The rows' outcomes: text (None without a tokenizer), ids, finish reason ("length" unless EOS / stop), and
    the call's KV-cache bytes."""
    return [Generation(text=r.text() if with_text else None, token_ids=r.ids,
                       finish_reason=r.finish_reason or "length", user=users[b] if users else None, steps=steps[b],
                       kv_bytes=kv)
            for b, r in enumerate(rows)]
