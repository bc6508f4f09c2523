"""ARGS as an HF `LogitsProcessor`, for users who want `model.generate(...)`.

Slower than the engine by design: every step it re-runs the reward backbone on each full candidate sequence
(no cache, B*k sequences). It must agree with the engine, which the tests check.
"""
from __future__ import annotations

import torch
from transformers import LogitsProcessor

from .features import last_token_states
from .heads import HeadBank
from .kernels import score_select
from .models import CausalLM


class ARGSLogitsProcessor(LogitsProcessor):
    """Replace the scores by s(v) = log pi(v) + w * r_u(x o y o v) on the top-k candidates, -inf elsewhere.

    prompt_mask [B, P]: the attention mask of the (left-padded) prompts given to generate; generated tokens
    are all real. users: one user id (or None = no head) per row.
    """

    def __init__(self, backbone: CausalLM, bank: HeadBank, users: list, prompt_mask: torch.Tensor, k: int = 10,
                 weight: float = 1.0):
        self.backbone, self.bank, self.k, self.weight = backbone, bank, k, weight
        self.slots = bank.slots(users)
        self.prompt_mask = prompt_mask.bool()

    @torch.inference_mode()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # input_ids [B, L], scores [B, V]
        B, L = input_ids.shape
        logprob = torch.log_softmax(scores.float(), dim=-1)
        top_lp, top_ids = torch.topk(logprob, self.k, dim=-1)  # [B, k]
        real = torch.ones(B, L, dtype=torch.bool)
        real[:, :self.prompt_mask.shape[1]] = self.prompt_mask
        seqs = [input_ids[b][real[b]].tolist() + [int(v)] for b in range(B) for v in top_ids[b]]
        h = last_token_states(self.backbone, seqs).view(B, self.k, -1).to(self.bank.W.device)  # [B, k, d]
        weight = torch.full((B,), float(self.weight), device=h.device)
        _, s, _ = score_select(h, self.bank.W, self.bank.b, self.slots, top_lp.to(h.device), weight)  # [B, k]
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(1, top_ids, s.to(device=scores.device, dtype=scores.dtype))
