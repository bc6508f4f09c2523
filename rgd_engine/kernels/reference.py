"""Torch reference implementations of the hot ops (lmhead_topk, score_select, gather_score_select).

These are the ground truth every fused backend (C++, Triton, CUDA) is tested against.
They favour clarity over speed and materialize the full [B, V] logits.
"""
from __future__ import annotations

import struct

import torch

GREEDY = "greedy"
SAMPLE = "sample"


def lmhead_topk_ref(hidden: torch.Tensor, weight: torch.Tensor, k: int):
    """Top-k log-probabilities of the LM head.

    hidden [B, d], weight [V, d] -> logprob [B, k] (float32, descending), ids [B, k] (int64), lse [B] (float32).
    logprob = logit - logsumexp(all V logits). Ties are broken by the lowest token id first.
    """
    # [B, d] x [V, d]
    logits = hidden.float() @ weight.float().t()  # [B, V]
    lse = torch.logsumexp(logits, dim=-1)  # [B]
    # A stable sort on the descending key keeps equal logits in ascending id order.
    order = torch.sort(logits, dim=-1, descending=True, stable=True)
    top = order.values[:, :k]
    ids = order.indices[:, :k].to(torch.int64)
    return top - lse[:, None], ids, lse


def gather_rewards_ref(cand_hidden, bank_w, bank_b, slot):
    """r[b, j] = bank_w[slot[b]] . cand_hidden[b, j] + bank_b[slot[b]]; 0 where slot[b] == -1.

    cand_hidden [B, k, d], bank_w [U, d], bank_b [U], slot [B] -> rewards [B, k] (float32).
    """
    has_head = slot >= 0  # [B]
    safe = slot.clamp(min=0).long()
    w = bank_w.float()[safe]  # [B, d]
    b = bank_b.float()[safe]  # [B]
    r = torch.einsum("bkd,bd->bk", cand_hidden.float(), w) + b[:, None]
    return torch.where(has_head[:, None], r, torch.zeros_like(r))


def support_scores(logprob: torch.Tensor, weight: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """s = logprob + weight * rewards, except that a candidate outside the policy's support (logprob -inf) scores
    -inf whatever the weight and reward (never nan from -inf + inf or 0 * inf). The rule of both selection ops
    in every backend. logprob [B, k], weight [B], rewards [B, k] -> [B, k] float32."""
    return torch.where(logprob == -torch.inf, -torch.inf, logprob + weight[:, None] * rewards)


def inverse_cdf_choice(scores: torch.Tensor, tau: float, rand: torch.Tensor) -> torch.Tensor:
    """Sample one index per row from softmax(scores / tau) by inverse CDF.

    scores [B, k], rand [B] uniform in [0, 1) -> chosen [B] (int64): the smallest i with
    cumsum(p)[i] > rand * sum(p), where p = exp((scores - max) / tau). A zero-probability
    candidate can never be chosen because its cumulative sum equals its predecessor's.
    """
    m = scores.max(dim=-1, keepdim=True).values  # [B, 1]
    p = torch.exp((scores - m) / tau)  # [B, k]
    c = torch.cumsum(p, dim=-1)  # [B, k]
    target = rand.float()[:, None] * c[:, -1:]  # [B, 1]
    hit = c > target  # [B, k]
    # First True per row; rows where rounding leaves no hit take the last non-zero candidate.
    idx = torch.argmax(hit.to(torch.int8), dim=-1)
    none = ~hit.any(dim=-1)
    if none.any():
        last_nonzero = (p > 0).to(torch.int64).cumsum(-1).argmax(-1)
        idx = torch.where(none, last_nonzero, idx)
    return idx.to(torch.int64)


def score_select_ref(cand_hidden, bank_w, bank_b, slot, logprob, weight, mode=GREEDY, tau=1.0, rand=None):
    """ARGS scoring and selection.

    cand_hidden [B, k, d], bank_w [U, d], bank_b [U], slot [B] (int, -1 = no head), logprob [B, k],
    weight [B], rand [B] (uniform, sample mode only)
    -> chosen [B] (int64 index into k), scores [B, k] = logprob + weight * rewards, rewards [B, k].
    A -inf logprob scores -inf whatever the reward (`support_scores`), as in gather_score_select_ref.
    Greedy: argmax with the lowest index first on ties. Sample: inverse CDF of softmax(scores / tau).
    """
    rewards = gather_rewards_ref(cand_hidden, bank_w, bank_b, slot)  # [B, k]
    scores = support_scores(logprob.float(), weight.float(), rewards)  # [B, k]
    if mode == GREEDY:
        chosen = torch.argmax(scores, dim=-1)  # first max on ties
    elif mode == SAMPLE:
        chosen = inverse_cdf_choice(scores, tau, rand)
    else:
        raise ValueError(f"score_select: mode must be 'greedy' or 'sample', got {mode!r}")
    return chosen.to(torch.int64), scores, rewards


def gather_score_select_ref(query, emb, cand_ids, offset, logprob, weight, ratio=0.0, mode=GREEDY, tau=1.0,
                            rand=None):
    """Token-level scoring of the k candidates by a per-row query vector against their embedding rows.

    query [B, d], emb [V, d], cand_ids [B, k] (int, in [0, V)), offset [B], logprob [B, k], weight [B],
    ratio (scalar), rand [B] (sample mode only)
    -> chosen [B] int64, scores [B, k], rewards [B, k] (float32) with
        rewards[b, j] = emb[cand_ids[b, j]] . query[b] + offset[b] - ratio * logprob[b, j]
        scores = logprob + weight * rewards.
    `token` rule: query = A_u h (per-user low-rank map), offset 0, ratio 0.
    `logratio` rule: query = h_u (profile-conditioned state), offset = -lse_u, ratio 1, so the reward is
    log pi_u(v) - log pi(v). Selection as in score_select_ref.

    -inf logprobs (every backend implements exactly this):
    - the ratio term is applied only when ratio != 0: with ratio 0 the reward is dot + offset (never 0 * -inf);
      with ratio != 0 and logprob -inf the reward is -ratio * -inf (+inf for ratio 1), kept as is;
    - a candidate with logprob == -inf is outside the policy's support: its score is -inf whatever the weight
      and reward, and it is never chosen (greedy skips it; sampling gives it zero probability);
    - a row whose candidates all have logprob -inf chooses index 0 (greedy and sample alike).
    """
    e = emb.float()[cand_ids.long()]  # [B, k, d]
    lp = logprob.float()
    rewards = torch.einsum("bkd,bd->bk", e, query.float()) + offset.float()[:, None]
    ratio = struct.unpack("f", struct.pack("f", float(ratio)))[0]  # the float32 ratio the fused backends see
    if ratio != 0.0:
        rewards = rewards - ratio * lp
    scores = support_scores(lp, weight.float(), rewards)  # [B, k]
    if mode == GREEDY:
        chosen = torch.argmax(scores, dim=-1)
    elif mode == SAMPLE:
        chosen = inverse_cdf_choice(scores, tau, rand)
    else:
        raise ValueError(f"gather_score_select: mode must be 'greedy' or 'sample', got {mode!r}")
    return chosen.to(torch.int64), scores, rewards
