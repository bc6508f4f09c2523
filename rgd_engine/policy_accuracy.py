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
Under the fast forward, x and all its responses are one forward and all their trees one more.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .kernels import lmhead_topk
from .models import CausalLM
from .prompt_cache import Prefill, PromptCache


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
    return _additive(allowed, dtype)


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


def _additive(allowed: torch.Tensor, dtype) -> torch.Tensor:
    """bool [q, T] (True = may attend) -> additive mask [1, 1, q, T] of the model dtype."""
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)[None, None]


class _HFPrompt:
    """A prompt x in an HF DynamicCache (every architecture): each response continues a copy of it, and its tree
    continues a copy of x o y. Models with sliding-window layers run the tree cache-free over x o y o C instead,
    since HF's cache keeps only the window for those layers (masked_forward bands the mask per layer type)."""

    def __init__(self, model: CausalLM, ids: list[int], room: int):
        self.model, self.ids = model, ids
        self.last, self.cache = _prefix(model, ids)  # [d], cache of x

    def extend_all(self, ys: list[list[int]]) -> list[torch.Tensor]:
        """-> [T_i, d] states of x o y_i,<=t per response; each x o y_i stays ready for tree_all()."""
        self.ys, self.tails, out = ys, [], []
        for y in ys:
            h, tail = _continue(self.model, (None, self.cache), y)
            self.tails.append(tail)
            out.append(h)
        return out

    def tree_all(self, cands: list[torch.Tensor]) -> list[torch.Tensor]:
        """cands [T_i, k] candidate ids after x o y_i (from extend_all) -> [T_i*k, d] tree states each."""
        return [self._tree(y, tail, c) for y, tail, c in zip(self.ys, self.tails, cands)]

    def _tree(self, y: list[int], tail, cand: torch.Tensor) -> torch.Tensor:
        P, (T, k), dev = len(self.ids), cand.shape, self.model.device
        pos = (P + torch.arange(T, device=dev)).repeat_interleave(k)[None]  # [1, T*k]: candidate (t, j) at P + t
        if self.model.window is None:
            mask = _candidate_mask(P, T, k, self.model.dtype).to(dev)
            return _continue(self.model, (None, tail), cand.reshape(-1).tolist(), position_ids=pos,
                             attention_mask=mask)[0]
        ids = torch.cat([torch.tensor(self.ids + y, device=dev), cand.reshape(-1)])[None]
        full_pos = torch.cat([torch.arange(P + T, device=dev)[None], pos], dim=1)
        mask = _candidate_mask(P, T, k, self.model.dtype, with_main=True).to(dev)
        return self.model.masked_forward(ids, full_pos, mask)[0, P + T:]


class _FastPrompt:
    """A prompt x and all its responses in the engine's tensor KV cache, by the fast Llama-family forward: x and
    every y_i are ONE forward (the responses side by side after x, each seeing x and itself only), and the
    candidate trees of all responses one more. Few, large forwards keep the matmuls near the CPU's peak."""

    def __init__(self, model: CausalLM, ids: list[int], room: int, prefill: Prefill | None = None):
        self.model, self.ids, self.P = model, ids, len(ids)
        self.cache = model.new_cache(1, self.P + room)
        self.prefilled = prefill is not None
        if prefill is not None:  # x's K/V from its single-row prefill: only the responses are forwarded
            self.cache.kv[:, :, :, :, :self.P] = prefill.cache.kv  # [L, 2, 1, Hkv, P, D]
            self.last = prefill.last_hidden  # [d]

    def _forward(self, ids: list[int], pos: list[int], allowed: torch.Tensor) -> torch.Tensor:
        """ids written at slots [length, length + q), allowed [q, length + q] bool -> hidden [q, d]."""
        dev = self.model.device
        mask = _additive(allowed, self.model.dtype).to(dev)
        h = self.model.forward(torch.tensor([ids], device=dev), torch.tensor([pos], device=dev), mask, self.cache)
        self.cache.length += len(ids)
        return h[0]

    def extend_all(self, ys: list[list[int]]) -> list[torch.Tensor]:
        """x o y_1 o ... o y_n in one forward (only y_1 o ... o y_n when x is prefilled): slot s of response i
        sees x and y_i's slots up to s."""
        P, lens = self.P, [len(y) for y in ys]
        owner = torch.tensor([-1] * P + [i for i, n in enumerate(lens) for _ in range(n)])  # response of each slot
        n = owner.numel()
        first = P if self.prefilled else 0  # the first slot this forward writes
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        allowed = causal & ((owner[None, :] == -1) | (owner[None, :] == owner[:, None]))
        pos = list(range(P)) + [P + t for m in lens for t in range(m)]
        self.cache.length = first
        h = self._forward((self.ids + [v for y in ys for v in y])[first:], pos[first:], allowed[first:])
        if not self.prefilled:
            self.last = h[P - 1]  # [d]
        self.starts = [P + sum(lens[:i]) for i in range(len(ys))]  # first slot of each response
        return [h[st - first:st - first + m] for st, m in zip(self.starts, lens)]

    def tree_all(self, cands: list[torch.Tensor]) -> list[torch.Tensor]:
        """Candidate (i, t, j) at position P + t sees x, y_i,<t and itself: all trees in one forward."""
        P, start = self.P, self.cache.length
        rows, pos, ids, sizes = [], [], [], []
        for st, cand in zip(self.starts, cands):
            T, k = cand.shape
            t = torch.arange(T).repeat_interleave(k)  # [T*k]: step of each candidate
            rows.append((st, t))
            pos += (P + t).tolist()
            ids += cand.reshape(-1).tolist()
            sizes.append(T * k)
        q = len(ids)
        allowed = torch.zeros(q, start + q, dtype=torch.bool)
        allowed[:, :P] = True
        r0, slots = 0, torch.arange(start)[None, :]
        for (st, t), size in zip(rows, sizes):
            allowed[r0:r0 + size, :start] |= (slots >= st) & (slots < st + t[:, None])
            r0 += size
        allowed[torch.arange(q), start + torch.arange(q)] = True
        h = self._forward(ids, pos, allowed)
        return list(h.split(sizes))


def _prompt(model: CausalLM, ids: list[int], room: int, prompt_cache: PromptCache | None = None):
    """x cached for responses (and trees) of up to `room` more tokens, in the storage of the model's forward.
    Under the fast forward, x's K/V come from prompt_cache (when it is this model's): the same single-row
    prefill that generation reuses. The HF path forwards x itself."""
    if model.fast is None:
        return _HFPrompt(model, ids, room)
    own = prompt_cache is not None and prompt_cache.model is model
    return _FastPrompt(model, ids, room, prompt_cache.get(ids) if own else None)


@torch.inference_mode()
def candidate_states(policy: CausalLM, backbone: CausalLM, prompt_ids: list[int], response_ids: list[int],
                     k: int, backend: str | None = None, cond_prompt_ids: list[int] | None = None,
                     prompt_cache: PromptCache | None = None) -> CandidateStates:
    """Teacher-forced candidate tree for one (prompt, response). backbone may be the policy (shared trunk).
    cond_prompt_ids: the profile-conditioned prompt (c_u o x) for the `logratio` rule, or None."""
    return prompt_candidate_states(policy, backbone, prompt_ids, [response_ids], k, backend, cond_prompt_ids,
                                   prompt_cache)[0]


@torch.inference_mode()
def prompt_candidate_states(policy: CausalLM, backbone: CausalLM, prompt_ids: list[int],
                            responses: list[list[int]], k: int, backend: str | None = None,
                            cond_prompt_ids: list[int] | None = None,
                            prompt_cache: PromptCache | None = None) -> list[CandidateStates]:
    """candidate_states of several responses to one prompt (a pair's chosen and rejected). The prompt x (and the
    conditioned prompt c_u o x) is forwarded once and shared through its KV cache (`_prompt`: the engine's tensor
    cache under the fast forward, else an HF cache); per response y, x o y continues that cache, and the T*k
    candidates are one more cached forward with a tree mask. prompt_cache: the policy's PromptCache, whose
    single-row prefills of x and c_u o x the fast forward starts from (and leaves there for generation)."""
    if any(not r for r in responses):
        raise ValueError("policy accuracy needs a non-empty response (0 tokens)")
    if not prompt_ids:
        raise ValueError("policy accuracy needs a non-empty prompt (0 tokens)")
    if cond_prompt_ids is not None and not cond_prompt_ids:
        raise ValueError("the conditioned prompt is empty (0 tokens)")
    dev = policy.device
    shared = backbone is policy
    total = sum(len(r) for r in responses)
    x_back = _prompt(backbone, prompt_ids, total * (k + 1), prompt_cache)
    x_pol = x_back if shared else _prompt(policy, prompt_ids, total, prompt_cache)
    c_pol = _prompt(policy, cond_prompt_ids, total, prompt_cache) if cond_prompt_ids is not None else None
    hs_back = x_back.extend_all(responses)  # [T_i, d] each: states of x o y_i,<=t
    hs_pol = hs_back if shared else x_pol.extend_all(responses)
    # the states that predict y_1..y_T of every response, in one LM-head call
    before = torch.cat([torch.cat([x_pol.last[None], h[:-1]]) for h in hs_pol])  # [sum T_i, d]
    top_lp, top_ids, lse = lmhead_topk(before, policy.lm_head_weight, k, backend=backend)  # [sum T, k] x2, [sum T]
    gold = torch.tensor([v for y in responses for v in y], device=dev)  # [sum T]
    gold_logit = (before.float() * policy.lm_head_weight[gold].float()).sum(-1)  # [sum T]
    logprob = torch.cat([top_lp, (gold_logit - lse)[:, None]], dim=1)  # [sum T, k+1]
    hit = top_ids == gold[:, None]  # [sum T, k]
    gold_index = torch.where(hit.any(1), hit.float().argmax(1), torch.full_like(gold, k))
    cand_ids = torch.cat([top_ids, gold[:, None]], dim=1)  # [sum T, k+1]
    lens = [len(y) for y in responses]
    # Candidate (t, j) sits at y_t's position P + t and attends to x o y<t and itself (depth-1 tree).
    trees = x_back.tree_all(list(top_ids.split(lens)))  # [T_i*k, d] each
    cond = None
    if c_pol is not None:
        hs_c = c_pol.extend_all(responses)  # [T_i, d] each
        h_c = torch.cat([torch.cat([c_pol.last[None], h[:-1]]) for h in hs_c])  # [sum T, d]: predict y_t | c_u o x
        _, _, lse_c = lmhead_topk(h_c, policy.lm_head_weight, 1, backend=backend)  # [sum T]: log Z of pi_u
        # only the k+1 candidates' rows of the LM head are read (as the logratio decoding step does)
        cand_logit = torch.einsum("td,tcd->tc", h_c.float(), policy.lm_head_weight[cand_ids].float())
        cond = (cand_logit - lse_c[:, None]).cpu().split(lens)  # [T_i, k+1] each
    out = []
    for i, (T, h_back, tree) in enumerate(zip(lens, hs_back, trees)):
        states = torch.cat([tree.view(T, k, -1), h_back[:, None]], dim=1).float().cpu()  # [T, k+1, d]: y_t last
        prefix = torch.cat([x_back.last[None], h_back[:-1]]).float().cpu()  # [T, d]: states of x o y<t
        rows = slice(sum(lens[:i]), sum(lens[:i + 1]))
        out.append(CandidateStates(logprob[rows].float().cpu(), states, gold_index[rows].cpu(),
                                   cand_ids[rows].cpu(), prefix, None if cond is None else cond[i]))
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
