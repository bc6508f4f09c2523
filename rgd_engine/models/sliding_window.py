"""Sliding-window attention layers (Gemma 3, Qwen2 with use_sliding_window) on the engine's KV cache, HF forward.

HF applies a sliding window only through the masks it builds itself; given the engine's ready-made 4D mask it
uses that mask for every layer, so the sliding layers would attend over the whole context. And an HF
`StaticCache` built from such a config gives the sliding layers a rolling buffer of `window` slots, which breaks
the engine's slot bookkeeping (candidate slots, commit). So:
- the cache is built from a copy of the config whose layers are all full attention (every slot is kept), and
- the forward gets a dict mask {"full_attention": M, "sliding_attention": band(M)} (HF's own format for
  models with several layer types), where band(M) also masks every key `window` or more tokens behind its query.

In the engine's masks each query sees its row's real committed tokens (consecutive positions, in slot order)
and itself, last: so a visible key's distance to its query is the number of visible keys in later slots, which
needs no slot -> position table. HF's rule is: key j is seen from query i iff i - j < window.
"""
from __future__ import annotations

import copy

import torch

SLIDING = "sliding_attention"


def sliding_window(config) -> int | None:
    """The window of `config`'s sliding-attention layers, None if it has none."""
    window = getattr(config, "sliding_window", None)
    if window is None or SLIDING not in (getattr(config, "layer_types", None) or ()):
        return None
    return int(window)


def full_attention_config(config):
    """A copy of `config` whose layers are all full attention, for building an HF StaticCache that keeps every slot."""
    full = copy.deepcopy(config)
    full.layer_types = ["full_attention"] * int(config.num_hidden_layers)
    full.sliding_window = None
    return full


def band_mask(mask: torch.Tensor, window: int) -> torch.Tensor:
    """mask [B, 1, q, T] additive (0 = visible) -> the same with keys >= `window` tokens behind their query masked."""
    visible = mask == 0
    later = visible.sum(-1, keepdim=True) - visible.long().cumsum(-1)  # [B, 1, q, T]: visible keys in later slots
    return mask.masked_fill(visible & (later >= window), torch.finfo(mask.dtype).min)


def layer_masks(mask: torch.Tensor, window: int) -> dict[str, torch.Tensor]:
    """HF's per-layer-type mask dict for a model with full and sliding layers. mask [B, 1, q, T] -> two of them."""
    return {"full_attention": mask, SLIDING: band_mask(mask, window)}
