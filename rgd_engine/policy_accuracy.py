"""Policy accuracy of reward-guided decoding (DESIGN.md), teacher-forced with a candidate tree.

For a response y to prompt x, at each step t the guided policy sees C_t = top-k_pi(x, y<t) U {y_t} and
    s_t(v) = log pi(v | x, y<t) + w * r_t(v),
    log pi~(y_t) = s_t(y_t) - logsumexp_{v in C_t} s_t(v),
    S(y) = mean_t log pi~(y_t)        (or the sum; strict: y_t outside the top-k gives -inf).
A pair (x, y_w, y_l) is correct iff S(y_w) > S(y_l); ties are wrong and counted separately.
The rules differ only in r_t(v) (decoder.py):
    args      r_u(x o y<t o v) = W_u . h(x o y<t o v) + b_u             (`sequence_scores`)
    token     r_u(v | h_t) = e_v . (P_u^T Q_u h_t), h_t the prefix state  (`token_sequence_scores`)
    logratio  log pi(v | c_u o x o y<t) - log pi(v | x o y<t), c_u the user's profile context
                                                                     (`logratio_sequence_scores`)
bon-block chooses whole blocks, not tokens, so it has no per-token policy; it is judged on generation only.

Cost: the candidate states do not depend on the user, the head or w (heads are linear in them), so ONE
tree-mask forward per sequence yields `CandidateStates` ([T, k+1] log-probs, [T, k+1, d] states) from which
every (method, head, w) configuration is evaluated by `sequence_scores` without touching the model again.
The same forward also yields the reward backbone's prefix states (the `token` rule's input), and an optional
forward of the profile-conditioned prompt gives log pi_u at the candidates (the `logratio` rule).
x o y is one cached forward (the prompt's part shared by all responses to it: `prompt_candidate_states`); the
T*k top-k candidates are one more forward over that cache, candidate (t, j) at y_t's position attending to
x o y<t and itself only. The gold token needs no extra slot: its causal state in x o y is exactly that.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .kernels import lmhead_topk
from .models import CausalLM


@dataclass
class CandidateStates:
    logprob: torch.Tensor  # [T, k+1]: log pi of the k top candidates, then of the gold token y_t
    states: torch.Tensor  # [T, k+1, d]: reward-backbone final-norm hidden state of x o y<t o v
    gold_index: torch.Tensor  # [T] int64: column of y_t among the top-k, or k when it is outside
    ids: torch.Tensor  # [T, k+1] int64: the k top candidate ids, then y_t
    prefix: torch.Tensor  # [T, d]: reward-backbone final-norm state of x o y<t (predicts step t)
    cond_logprob: torch.Tensor | None = None  # [T, k+1]: log pi(v | c_u o x o y<t), when a context was given

    @property
    def k(self) -> int:
        return self.logprob.shape[1] - 1


def _candidate_mask(P: int, T: int, k: int, dtype, with_main: bool = False) -> torch.Tensor:
    """Additive mask [1, 1, T*k, P+T+T*k] of the T*k candidates over x o y and themselves: candidate (t, j) sees
    x o y<t (the first P + t slots) and its own slot only. with_main: the causal rows of x o y come first
    ([1, 1, N, N], N = P+T+T*k: the whole tree in one cache-free forward)."""
    n = T * k
    t = torch.arange(n) // k  # step of each candidate
    allowed = torch.zeros(n, P + T + n, dtype=torch.bool)
    allowed[:, :P + T] = torch.arange(P + T)[None, :] < (P + t)[:, None]
    allowed[torch.arange(n), P + T + torch.arange(n)] = True
    if with_main:
        main = torch.zeros(P + T, P + T + n, dtype=torch.bool)
        main[:, :P + T] = torch.ones(P + T, P + T, dtype=torch.bool).tril()
        allowed = torch.cat([main, allowed])
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)[None, None]


def _prefix(model: CausalLM, ids: list[int]):
    """One cached forward of a shared prefix -> (its last final-norm state [d], the KV cache)."""
    out = model.base(input_ids=torch.tensor([ids], device=model.device), use_cache=True)
    return out.last_hidden_state[0, -1], out.cache


def _continue(model: CausalLM, prefix, ids: list[int], **kw) -> torch.Tensor:
    """Final-norm states [len(ids), d] of ids appended to a copy of a cached prefix (the prefix cache is kept)."""
    _, cache = prefix
    start = cache.get_seq_length()
    cache = copy.deepcopy(cache)
    pos = kw.pop("position_ids", torch.arange(start, start + len(ids), device=model.device)[None])
    return model.base(input_ids=torch.tensor([ids], device=model.device), cache=cache, use_cache=True,
                      position_ids=pos, cache_position=torch.arange(start, start + len(ids), device=model.device),
                      **kw).last_hidden_state[0], cache


class _HFPrompt:
    """A prompt x in an HF DynamicCache (every architecture): each response continues a copy of it, and its tree
    continues a copy of x o y. Models with sliding-window layers run the tree cache-free over x o y o C instead,
    since HF's cache keeps only the window for those layers (masked_forward bands the mask per layer type)."""

    def __init__(self, model: CausalLM, ids: list[int], room: int):
        self.model, self.ids = model, ids
        self.last, self.cache = _prefix(model, ids)  # [d], cache of x

    def extend(self, y: list[int]) -> torch.Tensor:
        """-> [T, d] states of x o y_<=t; x o y stays ready for tree()."""
        self.y = y
        h, self.tail = _continue(self.model, (None, self.cache), y)
        return h

    def tree(self, cand: torch.Tensor) -> torch.Tensor:
        """cand [T, k] candidate ids after x o y (from extend) -> [T*k, d] tree states."""
        P, (T, k), dev = len(self.ids), cand.shape, self.model.device
        pos = (P + torch.arange(T, device=dev)).repeat_interleave(k)[None]  # [1, T*k]: candidate (t, j) at P + t
        if self.model.window is None:
            mask = _candidate_mask(P, T, k, self.model.dtype).to(dev)
            return _continue(self.model, (None, self.tail), cand.reshape(-1).tolist(), position_ids=pos,
                             attention_mask=mask)[0]
        ids = torch.cat([torch.tensor(self.ids + self.y, device=dev), cand.reshape(-1)])[None]
        full_pos = torch.cat([torch.arange(P + T, device=dev)[None], pos], dim=1)
        mask = _candidate_mask(P, T, k, self.model.dtype, with_main=True).to(dev)
        return self.model.masked_forward(ids, full_pos, mask)[0, P + T:]


class _FastPrompt:
    """A prompt x forwarded once into the engine's tensor KV cache by the fast Llama-family forward: each
    response y is written into the slots after x (overwriting the previous response's), its tree after x o y,
    so nothing is copied and every forward is one fused-weight pass."""

    def __init__(self, model: CausalLM, ids: list[int], room: int):
        self.model, self.P = model, len(ids)
        self.cache = model.new_cache(1, self.P + room)
        self.last = self._causal(ids, 0)[-1]  # [d]

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, start: int) -> torch.Tensor:
        """ids [1, q] written at slots [start, start + q), mask [1, 1, q, start + q] -> hidden [q, d]."""
        self.cache.length = start  # the tensor forward writes K/V at slots [length, length + q)
        return self.model.forward(ids, pos, mask, self.cache)[0]

    def _causal(self, ids: list[int], start: int) -> torch.Tensor:
        """ids appended causally after slots [0, start) -> [len(ids), d]."""
        n, dev = len(ids), self.model.device
        allowed = torch.ones(n, start + n, dtype=torch.bool).tril(start)  # query i sees slots <= start + i
        mask = torch.zeros(n, start + n, dtype=self.model.dtype).masked_fill_(~allowed, torch.finfo(self.model.dtype).min)
        return self._forward(torch.tensor([ids], device=dev), torch.arange(start, start + n, device=dev)[None],
                             mask[None, None].to(dev), start)

    def extend(self, y: list[int]) -> torch.Tensor:
        self.T = len(y)
        return self._causal(y, self.P)

    def tree(self, cand: torch.Tensor) -> torch.Tensor:
        (T, k), dev = cand.shape, self.model.device
        pos = (self.P + torch.arange(T, device=dev)).repeat_interleave(k)[None]  # [1, T*k]
        mask = _candidate_mask(self.P, T, k, self.model.dtype).to(dev)
        return self._forward(cand.reshape(1, -1), pos, mask, self.P + T)


def _prompt(model: CausalLM, ids: list[int], room: int):
    """x cached for responses (and trees) of up to `room` more tokens, in the storage of the model's forward."""
    return (_FastPrompt if model.fast is not None else _HFPrompt)(model, ids, room)


@torch.inference_mode()
def candidate_states(policy: CausalLM, backbone: CausalLM, prompt_ids: list[int], response_ids: list[int],
                     k: int, backend: str | None = None, cond_prompt_ids: list[int] | None = None) -> CandidateStates:
    """Teacher-forced candidate tree for one (prompt, response). backbone may be the policy (shared trunk).
    cond_prompt_ids: the profile-conditioned prompt (c_u o x) for the `logratio` rule, or None."""
    return prompt_candidate_states(policy, backbone, prompt_ids, [response_ids], k, backend, cond_prompt_ids)[0]


@torch.inference_mode()
def prompt_candidate_states(policy: CausalLM, backbone: CausalLM, prompt_ids: list[int],
                            responses: list[list[int]], k: int, backend: str | None = None,
                            cond_prompt_ids: list[int] | None = None) -> list[CandidateStates]:
    """candidate_states of several responses to one prompt (a pair's chosen and rejected). The prompt x (and the
    conditioned prompt c_u o x) is forwarded once and shared through its KV cache (`_prompt`: the engine's tensor
    cache under the fast forward, else an HF cache); per response y, x o y continues that cache, and the T*k
    candidates are one more cached forward with a tree mask."""
    if any(not r for r in responses):
        raise ValueError("policy accuracy needs a non-empty response (0 tokens)")
    if not prompt_ids:
        raise ValueError("policy accuracy needs a non-empty prompt (0 tokens)")
    if cond_prompt_ids is not None and not cond_prompt_ids:
        raise ValueError("the conditioned prompt is empty (0 tokens)")
    dev = policy.device
    shared = backbone is policy
    T_max = max(len(r) for r in responses)
    x_back = _prompt(backbone, prompt_ids, T_max * (k + 1))
    x_pol = x_back if shared else _prompt(policy, prompt_ids, T_max)
    c_pol = _prompt(policy, cond_prompt_ids, T_max) if cond_prompt_ids is not None else None
    out = []
    for y in responses:
        T = len(y)
        h_back = x_back.extend(y)  # [T, d]: states of x o y_<=t
        h_pol = h_back if shared else x_pol.extend(y)
        before = torch.cat([x_pol.last[None], h_pol[:-1]])  # [T, d]: the states that predict y_1..y_T
        top_lp, top_ids, lse = lmhead_topk(before, policy.lm_head_weight, k, backend=backend)  # [T, k] x2, [T]
        gold = torch.tensor(y, device=dev)  # [T]
        gold_logit = (before.float() * policy.lm_head_weight[gold].float()).sum(-1)  # [T]
        logprob = torch.cat([top_lp, (gold_logit - lse)[:, None]], dim=1)  # [T, k+1]
        hit = top_ids == gold[:, None]  # [T, k]
        gold_index = torch.where(hit.any(1), hit.float().argmax(1), torch.full_like(gold, k))
        # Candidate (t, j) sits at y_t's position P + t and attends to x o y<t and itself (depth-1 tree).
        cand = x_back.tree(top_ids).view(T, k, -1)  # [T, k, d]
        states = torch.cat([cand, h_back[:, None]], dim=1).float().cpu()  # [T, k+1, d]: y_t's causal state last
        prefix = torch.cat([x_back.last[None], h_back[:-1]]).float().cpu()  # [T, d]: states of x o y<t
        cand_ids = torch.cat([top_ids, gold[:, None]], dim=1)  # [T, k+1]
        cond = None
        if c_pol is not None:
            h_c = c_pol.extend(y)  # [T, d]
            h_c = torch.cat([c_pol.last[None], h_c[:-1]]).float()  # [T, d]: states that predict y_t given c_u o x
            logits = h_c @ policy.lm_head_weight.float().t()  # [T, V]: T is a short response, so this stays small
            cond = torch.log_softmax(logits, -1).gather(1, cand_ids.to(h_c.device)).cpu()
        out.append(CandidateStates(logprob.float().cpu(), states, gold_index.cpu(), cand_ids.cpu(), prefix, cond))
    return out


def sequence_scores(cs: CandidateStates, W: torch.Tensor, b: torch.Tensor, weights: torch.Tensor,
                    strict: bool = False, reduce: str = "mean") -> torch.Tensor:
    """S(y) for every head and weight at once.

    W [H, d], b [H], weights [Nw] -> [H, Nw] float64. A head row of zeros (or w=0) gives the policy's own
    score restricted to the candidate set.
    """
    r = torch.einsum("tcd,hd->tch", cs.states.double(), W.double()) + b.double()  # [T, k+1, H]
    return rule_scores(cs, r, weights, strict, reduce)


def token_sequence_scores(cs: CandidateStates, emb: torch.Tensor, P: torch.Tensor, Q: torch.Tensor,
                          weights: torch.Tensor, strict: bool = False, reduce: str = "mean") -> torch.Tensor:
    """S(y) of the `token` rule for every head and weight. emb [V, d] (the reward backbone's output
    embedding), P, Q [H, r, d] -> [H, Nw] float64."""
    e = emb.detach()[cs.ids.to(emb.device)].double().cpu()  # [T, k+1, d]: only the candidates' rows are cast
    z = torch.einsum("hrd,td->thr", Q.double(), cs.prefix.double())  # [T, H, r]
    q = torch.einsum("hrd,thr->thd", P.double(), z)  # [T, H, d]: A_h h_t
    r = torch.einsum("tcd,thd->tch", e, q)  # [T, k+1, H]
    return rule_scores(cs, r, weights, strict, reduce)


def logratio_sequence_scores(cs: CandidateStates, weights: torch.Tensor, strict: bool = False,
                             reduce: str = "mean") -> torch.Tensor:
    """S(y) of the `logratio` rule (reward log pi_u - log pi) for every weight -> [1, Nw] float64."""
    if cs.cond_logprob is None:
        raise ValueError("logratio policy accuracy needs candidate states built with a conditioned prompt")
    r = (cs.cond_logprob.double() - cs.logprob.double())[:, :, None]  # [T, k+1, 1]
    return rule_scores(cs, r, weights, strict, reduce)


def rule_scores(cs: CandidateStates, r: torch.Tensor, weights: torch.Tensor, strict: bool = False,
                reduce: str = "mean") -> torch.Tensor:
    """S(y) from candidate rewards r [T, k+1, H] of any rule, for weights [Nw] -> [H, Nw] float64."""
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    T, k1 = cs.logprob.shape
    k = k1 - 1
    s = cs.logprob.double()[:, :, None, None] + weights.double()[None, None, None, :] * r[..., None]  # [T, k+1, H, Nw]
    outside = cs.gold_index == k  # [T]
    # C_t = top-k plus the gold column only when the gold token is not already among the top-k.
    valid = torch.ones(T, k1, dtype=torch.bool)
    valid[:, k] = outside
    lse = torch.logsumexp(s.masked_fill(~valid[:, :, None, None], float("-inf")), dim=1)  # [T, H, Nw]
    s_gold = s[torch.arange(T), cs.gold_index]  # [T, H, Nw]
    logp = s_gold - lse
    if strict:
        logp = logp.masked_fill(outside[:, None, None], float("-inf"))
    return logp.mean(0) if reduce == "mean" else logp.sum(0)


def pair_accuracy(s_chosen: torch.Tensor, s_rejected: torch.Tensor) -> dict:
    """s_* [N, ...] scores of chosen and rejected responses -> accuracy (strict >), ties, n along dim 0."""
    correct = (s_chosen > s_rejected).double()
    ties = (s_chosen == s_rejected).double()
    return {"accuracy": correct.mean(0), "ties": ties.sum(0), "n": s_chosen.shape[0]}
