"""Decode steps at static shapes, replayed from a CUDA graph (`GenerationConfig.cuda_graph`).

Why: at batch 1 a step of a small model launches some 25 kernels per layer (norms, projections, RoPE, cache writes,
attention, MLP), each with microseconds of work; on a GPU the launches, not the arithmetic, set the step time. A CUDA
graph records the step's launches once and replays them with one. A replay repeats the recorded kernels on the
recorded memory, so the step must
- read nothing on the host (recording fails on a host read): the decode loop already reads tokens in blocks;
- keep its shapes: attention spans the cache's whole capacity S under a mask (`KVCache.static_mask`), not the slots
  in use [0, T), and the new K/V go to slots named by a device scalar, the cache length, which the step advances;
- keep its addresses: it reads its inputs from, and writes its state to, buffers it owns (tokens, positions, length,
  the last hidden state).
The host keeps its own copy of the cache length (`KVCache.host_commit`) without reading the device.

Two steps have a graph: plain greedy (forward the chosen token, top-1 of the LM head) and greedy ARGS on the shared
trunk (top-k, the candidate tree, `score_select`, the commit: one graph). The first step at a batch size runs for real
on a side stream (warm-up: lazy initialization, Triton's compile); the next is recorded, and every later one replayed.
A batch that loses its finished rows (decoder._run) or a head bank that grows past its capacity (new tensors) gets a
new graph; a head replaced in place is read by the next replay, as by the default step.

On a CPU there is nothing to record: the same static step runs as is. It is slower there than the default step (it
attends over the whole capacity, with torch's ops), but the tests run it on CPU against the default step.
"""
from __future__ import annotations

import torch

from .kernels import GREEDY, lmhead_topk, score_select


def unsupported_reason(policy, separate_reward: bool) -> str | None:
    """None if a graphed step can run on `policy`, else a sentence saying why not. (The step itself, greedy plain or
    args, GenerationConfig.validate checks.)"""
    if separate_reward:
        return "a separate reward model has no graphed step (args on the shared trunk has)"
    if policy.fast is None:
        return f"model {policy.name!r} runs the HF forward; the graphed step needs the fast (Llama-family) forward"
    rope_type = getattr(policy.base.rotary_emb, "rope_type", "default")
    if "dynamic" in rope_type or rope_type == "longrope":
        return f"RoPE type {rope_type!r} reads the positions on the host"
    return None


class _Replay:
    """Calls `fn` (device work only, no host reads) for real once, records it into a CUDA graph on the next call and
    replays the graph on every later one, returning the recorded outputs (overwritten by each replay). Off CUDA,
    calls `fn`."""

    def __init__(self, fn, device: torch.device):
        self.fn, self.device = fn, device
        self.warm = False
        self.graph = None
        self.out = None

    def __call__(self):
        if self.device.type != "cuda":
            return self.fn()
        if self.graph is not None:
            self.graph.replay()
            return self.out
        current = torch.cuda.current_stream(self.device)
        if not self.warm:  # warm up on a side stream, as torch.cuda.graph's documentation asks
            side = torch.cuda.Stream(self.device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                out = self.fn()
            current.wait_stream(side)
            self.warm = True
            return out
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):  # records this step's kernels without running them
            self.out = self.fn()
        self.graph.replay()
        return self.out


class _StaticStep:
    """What both graphed steps hold: the policy's stream, the cache length as a device scalar, the rows' positions
    [B], and the replay of `_step` (a new one whenever the buffers it reads are new)."""

    def __init__(self, dec, policy, cfg):
        self.lm, self.backend, self.policy = dec.policy, dec.backend, policy
        self.scores = cfg.return_scores
        self.length = torch.tensor(policy.cache.length, device=policy.cache.kv.device)
        self.pos = policy.next_pos.clone()  # [B]

    def _new_graph(self):
        self.replay = _Replay(self._step, self.length.device)

    def select_rows(self, index: torch.Tensor):
        """Keep batch rows `index` [B'] (the decode loop drops finished rows): new buffers, so a new graph."""
        self.policy.cache.select_rows(index)
        self.pos = self.pos[index]
        self._keep_rows(index)
        self._new_graph()

    def streams(self):
        return [self.policy]


class GraphedPlain(_StaticStep):
    """Plain greedy decoding, one graphed step: forward the last chosen token, then top-1 of the LM head."""

    def __init__(self, dec, policy, cfg):
        super().__init__(dec, policy, cfg)
        self.tokens = torch.zeros_like(self.pos)  # [B]: the token each step forwards
        logprob, ids, _ = lmhead_topk(policy.last_hidden, self.lm.lm_head_weight, 1, backend=self.backend)
        self.next = ids[:, 0], logprob[:, 0]  # the first token comes from the prefill's last state
        self._new_graph()

    def _step(self):
        """Device work of one step -> the next token [B] and its logprob [B]."""
        cache = self.policy.cache
        hidden = self.lm.forward_static(self.tokens[:, None], self.pos[:, None], cache.static_mask(self.length, 1),
                                        cache, self.length.view(1))[:, 0]  # [B, d]
        cache.mark_committed(self.length)
        logprob, ids, _ = lmhead_topk(hidden, self.lm.lm_head_weight, 1, backend=self.backend)
        self.pos.add_(1)
        self.length.add_(1)
        return ids[:, 0], logprob[:, 0]

    def select(self):
        tokens, logprob = self.next
        tokens = tokens.clone()  # the next replay overwrites the graph's outputs
        return tokens, ({"token": tokens, "logprob": logprob.clone()} if self.scores else {})

    def advance(self, tokens):
        self.policy.cache.check_room(1)
        self.tokens.copy_(tokens)
        self.next = self.replay()
        self.policy.cache.host_commit()

    def _keep_rows(self, index: torch.Tensor):
        self.tokens = self.tokens[index]
        self.next = tuple(t[index] for t in self.next)


class GraphedArgs(_StaticStep):
    """Greedy ARGS on the shared trunk, one graphed step: the policy's top-k, their depth-1 tree forward, the heads'
    scores (`score_select`), and the commit of the chosen candidate, whose state is the next step's."""

    def __init__(self, dec, policy, bank, slots, weights, k: int, cfg):
        super().__init__(dec, policy, cfg)
        self.bank, self.slots, self.weights, self.k = bank, slots, weights, k
        self.hidden = policy.last_hidden.clone()  # [B, d]
        self._new_graph()

    def _new_graph(self):
        self.heads = (self.bank.W, self.bank.b)  # the tensors the graph reads; a grown bank has new ones
        super()._new_graph()

    def _step(self):
        """Device work of one step -> the chosen token [B] and the step's scores."""
        cache, k = self.policy.cache, self.k
        logprob, cand_ids, _ = lmhead_topk(self.hidden, self.lm.lm_head_weight, k, backend=self.backend)  # [B, k]
        cand_hidden = self.lm.forward_static(cand_ids, self.pos[:, None].expand(-1, k),
                                             cache.static_mask(self.length, k), cache,
                                             cache.static_slots(self.length, k))  # [B, k, d]
        chosen, scores, rewards = score_select(cand_hidden, self.heads[0], self.heads[1], self.slots, logprob,
                                               self.weights, GREEDY, 1.0, None, backend=self.backend,
                                               check_values=False)  # slots checked once per generate
        cache.static_commit(chosen, self.length)
        d = cand_hidden.shape[2]
        self.hidden.copy_(cand_hidden.gather(1, chosen[:, None, None].expand(-1, 1, d))[:, 0])
        self.pos.add_(1)
        self.length.add_(1)
        tokens = cand_ids.gather(1, chosen[:, None])[:, 0]
        return tokens, {"candidates": cand_ids, "logprob": logprob, "reward": rewards, "score": scores,
                        "chosen": chosen}

    def select(self):
        if self.heads[0] is not self.bank.W or self.heads[1] is not self.bank.b:
            self._new_graph()
        self.policy.cache.check_room(self.k)
        tokens, info = self.replay()
        self.policy.cache.host_commit()
        return tokens.clone(), ({key: t.clone() for key, t in info.items()} if self.scores else {})

    def advance(self, tokens):
        """Nothing: the step committed its chosen candidate (shared trunk)."""

    def _keep_rows(self, index: torch.Tensor):
        self.hidden = self.hidden[index]
        self.slots, self.weights = self.slots[index], self.weights[index]
