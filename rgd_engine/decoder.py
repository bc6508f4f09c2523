"""Batched, left-padded, KV-cached decoding, plain or reward-guided by one of the scoring rules.

Every guided step starts from the policy's candidates C = top-k of pi(.|x, y<t) (`lmhead_topk`) and scores
them s(v) = log pi(v) + w * r(v), then picks argmax (or samples softmax(s / tau)). The rules differ in r:
- `args` (ARGS): r_u(x o y<t o v), a sequence-level head on the backbone's final-norm state at each candidate,
  obtained by ONE forward of the k candidates as a depth-1 tree over the shared prefix cache (`score_select`).
  Shared trunk: the chosen candidate's state is also the policy's next-step state, so a step costs one
  forward of k tokens. Separate reward model: policy 1 token + reward model k tokens per step.
- `token` (GenARM-style): r_u(v | h) = e_v . (A_u h) from the prefix state h alone, A_u = P_u^T Q_u of rank r
  (`TokenHeadBank`); only the k candidates' embedding rows are read (`gather_score_select`). One 1-token
  forward per step (plus one of the reward backbone when it is separate).
- `logratio` (PAD-style): r_u(v) = log pi_u(v) - log pi(v), pi_u = the policy conditioned on the user's profile
  in its prompt; a second KV cache of that prompt advances with every chosen token (`gather_score_select`).
- `bon-block`: blockwise best-of-N, its own loop in bon_block.py.
With `cuda_graph`, plain greedy and greedy args on the shared trunk run as static-shape steps replayed from a CUDA
graph (graph_step.py) in the same loop.
What every loop shares (prompts, streams, the generator, the finished rows) is in stream.py.
"""
from __future__ import annotations

import torch

from .bon_block import generate_bon_block
from .config import GenerationConfig
from .errors import GenerationInputError
from .graph_step import GraphedArgs, GraphedPlain, unsupported_reason
from .heads import HeadBank, TokenHeadBank
from .kernels import GREEDY, SAMPLE, gather_score_select, lmhead_topk, score_select
from .kernels.dispatch import check_slots
from .models import CausalLM
from .sampling import filter_logits, sample_tokens
from .stopping import RowStopper, eos_token_ids
from .stream import Generation, Stream, finish, kv_bytes, left_pad, new_generator, open_stream


class Decoder:
    """Decodes token-id prompts. eos_ids / pad_token_id default to the policy's (its generation config, then its
    tokenizer); a policy without a tokenizer (the HF-native entry point, rgd_engine/hf.py) needs pad_token_id,
    cannot take stop strings, and returns Generation.text = None."""

    def __init__(self, policy: CausalLM, reward: CausalLM | None = None, backend: str | None = None,
                 eos_ids: set[int] | None = None, pad_token_id: int | None = None):
        self.policy = policy
        self.reward = reward
        self.backend = backend
        self.eos_ids = eos_token_ids(policy.hf_model, policy.tokenizer) if eos_ids is None else set(eos_ids)
        self.pad_token_id = policy.tokenizer.pad_token_id if pad_token_id is None else int(pad_token_id)

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], cfg: GenerationConfig, bank: HeadBank | TokenHeadBank | None = None,
                 slots: torch.Tensor | None = None, weights: torch.Tensor | None = None,
                 users: list | None = None, cond_prompts: list[list[int]] | None = None,
                 prompt_cache=None) -> list[Generation]:
        """prompts: token ids per row; slots [B] head-bank slots (-1 = none); weights [B] reward weights w;
        cond_prompts: the profile-conditioned prompt of each row (`logratio` rule only); prompt_cache: a
        PromptCache of the policy: its streams (the prompts, the conditioned prompts) start from single-row
        prefills, computed once per prompt (rgd_engine/prompt_cache.py)."""
        cfg.validate()
        B, dev = len(prompts), self.policy.device
        if B == 0:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError(f"prompt {[len(p) for p in prompts].index(0)} is empty (no tokens)")
        check_rule_inputs(cfg.rule, bank, cond_prompts, B)
        if prompt_cache is not None and prompt_cache.model is not self.policy:
            raise ValueError(f"prompt_cache belongs to model {prompt_cache.model.name!r}, not to the policy "
                             f"{self.policy.name!r}")
        if cfg.stop and self.policy.tokenizer is None:
            raise ValueError("stop strings need the policy's tokenizer (this policy has none)")
        slots = torch.full((B,), -1, dtype=torch.int64, device=dev) if slots is None else slots.to(dev)
        if bank is not None:
            # once per call: the steps' kernels skip their own (host-syncing) range checks. A bank only grows,
            # so a user added while this call runs cannot invalidate the slots.
            check_slots(slots, bank.capacity, "slots")
        weights = torch.full((B,), float(cfg.weight), device=dev) if weights is None else weights.to(dev).float()
        if cfg.cuda_graph:
            reason = unsupported_reason(self.policy, self.reward is not None)
            if reason is not None:
                raise GenerationInputError(f"cuda_graph: {reason}")
        if cfg.rule == "bon-block":
            return generate_bon_block(self, prompts, cfg, bank, slots, weights, users, prompt_cache)
        if cfg.rule == "logratio":
            guided = bool((weights != 0).any())
        else:
            guided = bank is not None and bool(((slots >= 0) & (weights != 0)).any())
        k = min(cfg.k, self.policy.vocab_size)
        ids, pad_mask = left_pad(prompts, self.pad_token_id, dev)
        # Scratch slots past the committed tokens: k for the args candidate tree, 1 for a plain step.
        capacity = ids.shape[1] + cfg.max_new_tokens + (k if guided and cfg.rule == "args" else 1)
        policy = open_stream(self.policy, prompts, ids, pad_mask, capacity, prompt_cache)
        gen = new_generator(cfg.seed, dev)
        if cfg.cuda_graph:  # rgd_engine/graph_step.py
            step = GraphedPlain(self, policy, cfg) if not guided else \
                GraphedArgs(self, policy, bank, slots, weights, k, cfg)
        elif not guided:
            step = _Plain(self, policy, cfg, gen)
        elif cfg.rule == "args":
            rm = Stream(self.reward, ids, pad_mask, capacity) if self.reward is not None else None
            step = _Args(self, policy, rm, bank, slots, weights, k, cfg, gen)
        elif cfg.rule == "token":
            rm = Stream(self.reward, ids, pad_mask, capacity) if self.reward is not None else None
            step = _Token(self, policy, rm, bank, slots, weights, k, cfg, gen)
        else:
            cond_ids, cond_mask = left_pad(cond_prompts, self.pad_token_id, dev)
            cond_capacity = cond_ids.shape[1] + cfg.max_new_tokens + 1
            cond = open_stream(self.policy, cond_prompts, cond_ids, cond_mask, cond_capacity, prompt_cache)
            step = _LogRatio(self, policy, cond, weights, k, cfg, gen)
        return self._run(step, cfg, B, users)

    def _run(self, step, cfg: GenerationConfig, B: int, users: list | None) -> list[Generation]:
        """The decode loop. A step reads nothing on the host: its chosen tokens [B] stay on the device until
        sync_every of them are gathered into a [B, n] block, which ONE host read brings over; the rows' stoppers
        then check EOS and the new text for stop strings, and the loop ends once every row is finished.
        Finished rows leave the batch (`step.select_rows`) once they are a quarter of it: a finished row would
        otherwise cost a full row of every later forward. Greedy rows are unaffected by who else is in the
        batch; sampled rows draw from the one generator in batch order, so their draws (not their distribution)
        depend on when other rows finish. Per-step scores (return_scores) are read once, at the end."""
        dev = self.policy.device
        kv = kv_bytes(step.streams())  # after the streams' prefill, before any row leaves the batch
        eos = set() if cfg.ignore_eos else self.eos_ids
        every = cfg.sync_every or (1 if dev.type == "cpu" else 8)
        rows = [RowStopper(self.policy.tokenizer, eos, tuple(cfg.stop)) for _ in range(B)]
        with_text = self.policy.tokenizer is not None
        done = [False] * B
        active = list(range(B))  # the original row of each batch row
        block: list[torch.Tensor] = []  # [B_active] tokens of the steps not yet on the host
        infos: list[tuple[list[int], dict]] = []  # (active rows, per-step scores [B_active, ...])
        for t in range(cfg.max_new_tokens):
            tokens, info = step.select()  # [B_active]
            block.append(tokens)
            if cfg.return_scores:
                infos.append((active, info))
            last = t == cfg.max_new_tokens - 1
            if len(block) == every or last:
                host = torch.stack(block, 1).tolist()  # [B_active, n]: the one host read of n steps
                block = []
                for row, toks in zip(active, host):
                    for tok in toks:
                        if done[row]:
                            break
                        done[row] = rows[row].push(tok)
                if all(done):
                    break
                n_done = sum(done[row] for row in active)
                if not last and n_done and 4 * n_done >= len(active):
                    keep = [i for i, row in enumerate(active) if not done[row]]
                    index = torch.tensor(keep, device=tokens.device)
                    step.select_rows(index)
                    tokens = tokens[index]
                    active = [active[i] for i in keep]
            if last:
                break
            step.advance(tokens)
        steps = _host_steps(infos, [len(r.ids) for r in rows]) if cfg.return_scores else [None] * B
        return finish(rows, users, steps, with_text, kv)


def _host_steps(infos: list[tuple[list[int], dict]], lengths: list[int]) -> list[list[dict]]:
    """Per-step scores (active rows, {key: [B_active, ...]}) -> per row, one dict of lists per kept step.
    One host read per key and run of steps with the same active rows."""
    out: list[list[dict]] = [[] for _ in lengths]
    i = 0
    while i < len(infos):
        active = infos[i][0]
        j = i
        while j < len(infos) and infos[j][0] is active:
            j += 1
        per_key = {key: torch.stack([info[key] for _, info in infos[i:j]], 1).tolist()
                   for key in infos[i][1]}  # [B_active, j - i, ...]
        for b, row in enumerate(active):
            for t in range(j - i):
                if len(out[row]) < lengths[row]:
                    out[row].append({key: per_key[key][b][t] for key in per_key})
        i = j
    return out


def check_rule_inputs(rule: str, bank, cond_prompts, B: int) -> None:
    """What each rule needs, with an error that says what is missing."""
    if rule == "token" and bank is not None and not isinstance(bank, TokenHeadBank):
        raise ValueError("rule 'token' needs a token-level head bank (TokenHeadBank, kind 'token'); "
                         f"got a {type(bank).__name__}")
    if rule in ("args", "bon-block") and bank is not None and not isinstance(bank, HeadBank):
        raise ValueError(f"rule {rule!r} needs a sequence-level head bank (HeadBank, kind 'sequence'); "
                         f"got a {type(bank).__name__}")
    if rule == "logratio":
        if cond_prompts is None:
            raise ValueError("rule 'logratio' needs a profile-conditioned prompt per row (cond_prompts)")
        if len(cond_prompts) != B:
            raise ValueError(f"{B} prompts but {len(cond_prompts)} conditioned prompts")
        if any(len(p) == 0 for p in cond_prompts):
            raise ValueError(f"conditioned prompt {[len(p) for p in cond_prompts].index(0)} is empty (no tokens)")


class _Plain:
    """No reward: greedy through the fused top-1, or plain sampling (temperature, top-k, top-p)."""

    def __init__(self, dec: Decoder, policy: Stream, cfg: GenerationConfig, gen):
        self.dec, self.policy, self.cfg, self.gen = dec, policy, cfg, gen

    def select(self):
        h = self.policy.last_hidden  # [B, d]
        if self.cfg.sample:
            logits = filter_logits(self.dec.policy.logits(h), self.cfg.temperature, self.cfg.top_k, self.cfg.top_p)
            tokens = sample_tokens(logits, self.gen)
            logprob = torch.log_softmax(logits, -1).gather(1, tokens[:, None])
            return tokens, {"token": tokens, "logprob": logprob[:, 0]}
        logprob, ids, _ = lmhead_topk(h, self.dec.policy.lm_head_weight, 1, backend=self.dec.backend)
        return ids[:, 0], {"token": ids[:, 0], "logprob": logprob[:, 0]}

    def advance(self, tokens):
        self.policy.step(tokens)

    def select_rows(self, index: torch.Tensor):
        """Keep batch rows `index` [B'] (the decode loop drops finished rows)."""
        self.policy.select_rows(index)

    def streams(self) -> list[Stream]:
        return [self.policy]


class _Guided:
    """One reward-guided step, the same for every rule: the policy's candidates C = top-k of pi (`lmhead_topk`),
    the rule's `score` (s = log pi + w r over C, and the chosen index, by one fused kernel), the chosen token.
    Subclasses supply score() and advance()."""

    def __init__(self, dec: Decoder, policy: Stream, weights, k: int, cfg: GenerationConfig, gen):
        self.dec, self.policy, self.weights, self.k, self.cfg, self.gen = dec, policy, weights, k, cfg, gen
        self.mode = SAMPLE if cfg.sample else GREEDY

    def select(self):
        logprob, cand_ids, _ = lmhead_topk(self.policy.last_hidden, self.dec.policy.lm_head_weight, self.k,
                                           backend=self.dec.backend)  # [B, k]
        rand = torch.rand(len(self.weights), generator=self.gen, device=self.weights.device) if self.cfg.sample \
            else None
        chosen, scores, rewards = self.score(cand_ids, logprob, rand)  # [B], [B, k], [B, k]
        tokens = cand_ids.gather(1, chosen[:, None])[:, 0]
        return tokens, {"candidates": cand_ids, "logprob": logprob, "reward": rewards, "score": scores,
                        "chosen": chosen}

    def score(self, cand_ids, logprob, rand):
        """cand_ids [B, k], logprob [B, k], rand [B] or None -> chosen [B], scores [B, k], rewards [B, k]."""
        raise NotImplementedError

    def select_rows(self, index: torch.Tensor):
        """Keep batch rows `index` [B'] of every per-row tensor and stream (the decode loop drops finished rows)."""
        self.weights = self.weights[index]
        for stream in self.streams():
            stream.select_rows(index)

    def streams(self) -> list[Stream]:
        return [self.policy]

    def _gather_score_select(self, query, emb, offset, cand_ids, logprob, ratio: float, rand):
        return gather_score_select(query, emb, cand_ids, offset, logprob, self.weights, ratio, self.mode,
                                   self.cfg.temperature, rand, backend=self.dec.backend,
                                   check_values=False)  # ids from lmhead_topk are in range


class _Args(_Guided):
    """ARGS: candidate tree forward of the reward backbone, sequence-level heads (`score_select`)."""

    def __init__(self, dec: Decoder, policy: Stream, rm: Stream | None, bank: HeadBank, slots, weights, k, cfg, gen):
        super().__init__(dec, policy, weights, k, cfg, gen)
        self.rm, self.bank, self.slots = rm, bank, slots
        self.scorer = rm if rm is not None else policy

    def score(self, cand_ids, logprob, rand):
        cand_hidden = self.scorer.expand(cand_ids)  # [B, k, d]
        out = score_select(cand_hidden, self.bank.W, self.bank.b, self.slots, logprob, self.weights, self.mode,
                           self.cfg.temperature, rand, backend=self.dec.backend,
                           check_values=False)  # slots checked once per generate
        self.scorer.keep(out[0], self.k, cand_hidden)  # shared trunk: this is also the policy's next state
        return out

    def select_rows(self, index):
        super().select_rows(index)
        self.slots = self.slots[index]

    def streams(self):
        return [self.policy] + ([self.rm] if self.rm is not None else [])

    def advance(self, tokens):
        if self.rm is not None:
            self.policy.step(tokens)


class _Token(_Guided):
    """GenARM-style token-level heads: r_u(v | h) = e_v . (A_u h) on the prefix state (`gather_score_select`)."""

    def __init__(self, dec: Decoder, policy: Stream, rm: Stream | None, bank: TokenHeadBank, slots, weights, k,
                 cfg, gen):
        super().__init__(dec, policy, weights, k, cfg, gen)
        self.rm, self.bank, self.slots = rm, bank, slots
        self.scorer = rm if rm is not None else policy
        self.zeros = torch.zeros(len(slots), device=slots.device)

    def score(self, cand_ids, logprob, rand):
        query = self.bank.query(self.scorer.last_hidden, self.slots)  # [B, d]
        return self._gather_score_select(query, self.scorer.model.lm_head_weight, self.zeros, cand_ids, logprob,
                                         0.0, rand)

    def advance(self, tokens):
        self.policy.step(tokens)
        if self.rm is not None:
            self.rm.step(tokens)

    def select_rows(self, index):
        super().select_rows(index)
        self.slots, self.zeros = self.slots[index], self.zeros[index]

    def streams(self):
        return [self.policy] + ([self.rm] if self.rm is not None else [])


class _LogRatio(_Guided):
    """PAD-style: r_u(v) = log pi_u(v) - log pi(v) with pi_u the profile-conditioned policy (its own KV cache)."""

    def __init__(self, dec: Decoder, policy: Stream, cond: Stream, weights, k, cfg, gen):
        super().__init__(dec, policy, weights, k, cfg, gen)
        self.cond = cond

    def score(self, cand_ids, logprob, rand):
        E = self.dec.policy.lm_head_weight
        h_u = self.cond.last_hidden  # [B, d]
        _, _, lse_u = lmhead_topk(h_u, E, 1, backend=self.dec.backend)  # [B]: log Z of pi_u over all V
        return self._gather_score_select(h_u, E, -lse_u, cand_ids, logprob, 1.0, rand)

    def advance(self, tokens):
        self.policy.step(tokens)
        self.cond.step(tokens)

    def streams(self):
        return [self.policy, self.cond]
