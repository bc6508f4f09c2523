"""Batched, left-padded, KV-cached decoding, plain or reward-guided with the ARGS rule.

Per step t of a guided row (DESIGN.md): candidates C = top-k of pi(.|x, y<t) from `lmhead_topk`; each
candidate's reward r_u(x o y<t o v) is the head applied to the backbone's final-norm hidden state at that
candidate, obtained by ONE forward of the k candidates as a depth-1 tree over the shared prefix cache;
`score_select` forms s(v) = log pi(v) + w * r_u and picks argmax (or samples softmax(s / tau)).
Shared trunk: the chosen candidate's hidden state is also the policy's next-step state, so a step costs one
forward of k tokens. Separate reward model: policy 1 token + reward model k tokens per step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import GenerationConfig
from .heads import HeadBank
from .kernels import GREEDY, SAMPLE, lmhead_topk, score_select
from .models import CausalLM
from .sampling import filter_logits, sample_tokens
from .stopping import RowStopper, eos_token_ids


@dataclass
class Generation:
    text: str
    token_ids: list
    finish_reason: str
    user: str | None = None
    steps: list | None = None  # per-step scores when requested


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ids [B, P] int64 and mask [B, P] bool (True = real token), padded on the left."""
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(prompts), P), dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):] = torch.tensor(p, dtype=torch.int64)
        mask[i, P - len(p):] = True
    return ids.to(device), mask.to(device)


class _Stream:
    """One model's KV cache plus the next position of every row."""

    def __init__(self, model: CausalLM, ids, pad_mask, capacity: int):
        self.model = model
        self.cache = model.new_cache(ids.shape[0], capacity)
        positions = (pad_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, P]
        hidden = model.forward(ids, positions, self.cache.prefill_mask(pad_mask), self.cache)
        self.cache.advance(ids.shape[1], pad_mask)
        self.last_hidden = hidden[:, -1]  # [B, d]: left padding puts every row's last real token here
        self.next_pos = pad_mask.long().sum(-1)  # [B]

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


class Decoder:
    def __init__(self, policy: CausalLM, reward: CausalLM | None = None, backend: str | None = None):
        self.policy = policy
        self.reward = reward
        self.backend = backend
        self.eos_ids = eos_token_ids(policy.hf_model, policy.tokenizer)

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], cfg: GenerationConfig, bank: HeadBank | None = None,
                 slots: torch.Tensor | None = None, weights: torch.Tensor | None = None,
                 users: list | None = None) -> list[Generation]:
        """prompts: token ids per row; slots [B] head-bank slots (-1 = none); weights [B] ARGS weights."""
        cfg.validate()
        B, dev = len(prompts), self.policy.device
        if B == 0:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError(f"prompt {[len(p) for p in prompts].index(0)} is empty (no tokens)")
        slots = torch.full((B,), -1, dtype=torch.int64, device=dev) if slots is None else slots.to(dev)
        weights = torch.full((B,), float(cfg.weight), device=dev) if weights is None else weights.to(dev).float()
        guided = bank is not None and bool(((slots >= 0) & (weights != 0)).any())
        k = min(cfg.k, self.policy.vocab_size)
        ids, pad_mask = left_pad(prompts, self.policy.tokenizer.pad_token_id, dev)
        capacity = ids.shape[1] + cfg.max_new_tokens + (k if guided else 1)
        policy = _Stream(self.policy, ids, pad_mask, capacity)
        rm = _Stream(self.reward, ids, pad_mask, capacity) if guided and self.reward is not None else None
        gen = torch.Generator(device=dev)
        if cfg.seed is not None:
            gen.manual_seed(cfg.seed)
        else:
            gen.seed()
        eos = set() if cfg.ignore_eos else self.eos_ids
        rows = [RowStopper(self.policy.tokenizer, eos, tuple(cfg.stop)) for _ in range(B)]
        steps: list[list] = [[] for _ in range(B)]
        done = [False] * B
        for t in range(cfg.max_new_tokens):
            if guided:
                tokens, info = self._guided_step(policy, rm, bank, slots, weights, k, cfg, gen)
            else:
                tokens, info = self._plain_step(policy, cfg, gen)
            tok_list = tokens.tolist()
            for b in range(B):
                if done[b]:
                    continue
                if cfg.return_scores:
                    steps[b].append({key: v[b].tolist() for key, v in info.items()})
                done[b] = rows[b].push(tok_list[b])
            if all(done) or t == cfg.max_new_tokens - 1:
                break
            if not guided or rm is not None:
                policy.step(tokens)
        return [Generation(text=r.text(), token_ids=r.ids, finish_reason=r.finish_reason or "length",
                           user=users[b] if users else None, steps=steps[b] if cfg.return_scores else None)
                for b, r in enumerate(rows)]

    def _plain_step(self, policy: _Stream, cfg: GenerationConfig, gen):
        h = policy.last_hidden  # [B, d]
        if cfg.sample:
            logits = filter_logits(self.policy.logits(h), cfg.temperature, cfg.top_k, cfg.top_p)  # [B, V]
            tokens = sample_tokens(logits, gen)
            logprob = torch.log_softmax(logits, -1).gather(1, tokens[:, None])
            return tokens, {"token": tokens, "logprob": logprob[:, 0]}
        logprob, ids, _ = lmhead_topk(h, self.policy.lm_head_weight, 1, backend=self.backend)
        return ids[:, 0], {"token": ids[:, 0], "logprob": logprob[:, 0]}

    def _guided_step(self, policy: _Stream, rm: _Stream | None, bank: HeadBank, slots, weights, k, cfg, gen):
        logprob, cand_ids, _ = lmhead_topk(policy.last_hidden, self.policy.lm_head_weight, k, backend=self.backend)
        scorer = rm if rm is not None else policy
        cand_hidden = scorer.expand(cand_ids)  # [B, k, d]
        mode = SAMPLE if cfg.sample else GREEDY
        rand = torch.rand(len(slots), generator=gen, device=slots.device) if cfg.sample else None
        chosen, scores, rewards = score_select(cand_hidden, bank.W, bank.b, slots, logprob, weights, mode,
                                               cfg.temperature, rand, backend=self.backend)
        scorer.keep(chosen, k, cand_hidden)
        tokens = cand_ids.gather(1, chosen[:, None])[:, 0]
        return tokens, {"candidates": cand_ids, "logprob": logprob, "reward": rewards, "score": scores,
                        "chosen": chosen}
