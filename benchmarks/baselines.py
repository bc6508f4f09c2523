"""Published-style ARGS implementations, written plainly with HF model calls, as throughput baselines.

Both run the ARGS rule (Khanov et al. 2024) greedily: per step, candidates C = top-k of log pi(.|x, y<t) and
s(v) = log pi(v) + weight * r(x o y<t o v) with r(z) = w . h(z) + b, h = the reward backbone's final-norm hidden
state at the last token. The policy keeps its own HF cache for its logits in both. They differ in the reward
model, as published RGD codes do it:

- `args_kcopy` (the ARGS reference, deeplearning-wisc/args): the reward model keeps an HF DynamicCache whose batch
  holds k rows per sequence, each a full copy of the prefix; the k candidates are one token per row; after the
  choice the winner's row is copied k times (`reorder_cache`, the beam-search primitive). One kindness over the
  reference: the prompt is prefilled once and then repeated k times, instead of prefilling k identical rows.
  The reference scores with raw logits; log-softmax differs by a per-row constant, so argmax is the same.
- `args_nocache`: the reward model re-runs every full candidate sequence x o y<t o v each step, batched over the
  k candidates, with no cache.

Prompts must all have the same length (no padding), which the benchmark guarantees. No EOS handling: every row
runs `new_tokens` steps, like the engine with EOS ignored.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache


@dataclass
class BaselineOutput:
    tokens: torch.Tensor  # [B, new_tokens] int64
    kv_bytes: int  # KV-cache bytes held by both models after the last step


def cache_bytes(cache: DynamicCache) -> int:
    return sum(t.numel() * t.element_size() for layer in cache.layers
               if getattr(layer, "is_initialized", False) for t in (layer.keys, layer.values))


def _check_prompts(prompt_ids: torch.Tensor) -> torch.Tensor:
    if prompt_ids.dim() != 2 or prompt_ids.dtype != torch.int64:
        raise ValueError(f"prompt_ids must be an int64 [B, P] tensor (equal-length prompts), got "
                         f"{prompt_ids.dtype} {tuple(prompt_ids.shape)}")
    return prompt_ids


class _Policy:
    """The policy with its own HF cache: log pi(. | x, y<t) of the last position."""

    def __init__(self, hf_model, prompt_ids: torch.Tensor):
        self.model = hf_model
        self.cache = DynamicCache(config=hf_model.config)
        self.logprob = self._run(prompt_ids)  # [B, V]

    def _run(self, ids: torch.Tensor) -> torch.Tensor:
        # logits_to_keep=1: only the last position's [B, V] logits are computed, not [B, P, V].
        out = self.model(input_ids=ids, cache=self.cache, use_cache=True, logits_to_keep=1)
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1)

    def step(self, tokens: torch.Tensor):
        """tokens [B] -> updates logprob [B, V]."""
        self.logprob = self._run(tokens[:, None])


def _reward(hidden_last: torch.Tensor, w: torch.Tensor, b: float) -> torch.Tensor:
    """hidden_last [N, d] -> r [N] = w . h + b (float32)."""
    return hidden_last.float() @ w.float() + b


def _choose(logprob: torch.Tensor, rewards: torch.Tensor, weight: float) -> torch.Tensor:
    """logprob/rewards [B, k] -> index of the chosen candidate per row [B] (first max on ties)."""
    return torch.argmax(logprob + weight * rewards, dim=-1)


@torch.inference_mode()
def args_kcopy(policy_hf, reward_base, head_w: torch.Tensor, head_b: float, prompt_ids: torch.Tensor,
               new_tokens: int, k: int, weight: float) -> BaselineOutput:
    """ARGS with a k-row reward cache copied after every choice. reward_base: the reward backbone's base model
    (final-norm hidden states out); head_w [d], head_b: the linear reward head."""
    prompt_ids = _check_prompts(prompt_ids)
    B = prompt_ids.shape[0]
    policy = _Policy(policy_hf, prompt_ids)
    rm_cache = DynamicCache(config=reward_base.config)
    reward_base(input_ids=prompt_ids, cache=rm_cache, use_cache=True)
    rm_cache.batch_repeat_interleave(k)  # [B*k, ...]: k full copies of each prefix
    row0 = torch.arange(B, device=prompt_ids.device) * k  # [B] first of each row's k cache rows
    out = []
    for t in range(new_tokens):
        logprob, cand = policy.logprob.topk(k, dim=-1)  # [B, k] each, descending
        hidden = reward_base(input_ids=cand.reshape(B * k, 1), cache=rm_cache, use_cache=True).last_hidden_state
        rewards = _reward(hidden[:, -1], head_w, head_b).view(B, k)  # [B, k]
        chosen = _choose(logprob, rewards, weight)  # [B]
        tokens = cand.gather(1, chosen[:, None])[:, 0]  # [B]
        out.append(tokens)
        # The winner's cache row becomes all k rows of its sequence (a full copy of the prefix per row).
        rm_cache.reorder_cache((row0 + chosen).repeat_interleave(k))
        if t < new_tokens - 1:
            policy.step(tokens)
    return BaselineOutput(torch.stack(out, dim=1), cache_bytes(policy.cache) + cache_bytes(rm_cache))


@torch.inference_mode()
def args_nocache(policy_hf, reward_base, head_w: torch.Tensor, head_b: float, prompt_ids: torch.Tensor,
                 new_tokens: int, k: int, weight: float) -> BaselineOutput:
    """ARGS with the reward model re-run on every full candidate sequence each step (no reward cache)."""
    prompt_ids = _check_prompts(prompt_ids)
    B = prompt_ids.shape[0]
    policy = _Policy(policy_hf, prompt_ids)
    seq = prompt_ids  # [B, P + t]
    out = []
    for t in range(new_tokens):
        logprob, cand = policy.logprob.topk(k, dim=-1)  # [B, k]
        # [B*k, P + t + 1]: each row's sequence repeated once per candidate, candidate appended
        cand_seqs = torch.cat([seq.repeat_interleave(k, dim=0), cand.reshape(B * k, 1)], dim=1)
        hidden = reward_base(input_ids=cand_seqs, use_cache=False).last_hidden_state
        rewards = _reward(hidden[:, -1], head_w, head_b).view(B, k)  # [B, k]
        chosen = _choose(logprob, rewards, weight)
        tokens = cand.gather(1, chosen[:, None])[:, 0]  # [B]
        out.append(tokens)
        seq = torch.cat([seq, tokens[:, None]], dim=1)
        if t < new_tokens - 1:
            policy.step(tokens)
    return BaselineOutput(torch.stack(out, dim=1), cache_bytes(policy.cache))
