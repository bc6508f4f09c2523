"""Blockwise best-of-N (`bon-block` rule; blockwise controlled decoding).

Per block: every row fans out into N samples that each draw M tokens from pi (temperature / top-k / top-p of the
config), each sample is scored by the row's sequence-level head on the reward backbone's final-norm state after
its last token, r_u(x o y o block_n), the best block is kept (first on ties) and the next block starts from it.
N = 1 is plain sampling; M >= max_new_tokens is plain best-of-N over whole responses.

The N samples are N batch rows, each holding the row's cache: the fan-out and the copy of the winner's cache over
its group after each block are one gather per block (`KVCache.select_rows`), amortized over M tokens; the same
gather drops the rows that finished. A sample that emits EOS is finished: its later tokens are ignored and its
reward is read at its EOS. Stop strings are applied to the kept tokens only (they cut the text but do not end a
sample inside a block). The reward of a block is selected by `score_select` with zero log-probs and the row's w,
i.e. argmax_n w r_u: the best block for w > 0, the first sample (plain sampling) for w = 0 or a row without a head.
"""
from __future__ import annotations

import torch

from .config import GenerationConfig
from .heads import HeadBank
from .kernels import GREEDY, score_select
from .sampling import filter_logits, sample_tokens
from .stopping import RowStopper
from .stream import Stream, finish, kv_bytes, left_pad, new_generator, open_stream


def generate_bon_block(dec, prompts: list[list[int]], cfg: GenerationConfig, bank: HeadBank | None,
                       slots: torch.Tensor, weights: torch.Tensor, users: list | None, prompt_cache=None) -> list:
    """slots [B] head-bank slots (-1 = none), weights [B] reward weights w (on the policy's device);
    prompt_cache: the policy's PromptCache or None (Decoder.generate)."""
    B, N, dev = len(prompts), cfg.n_samples, dec.policy.device
    guided = bank is not None and bool(((slots >= 0) & (weights != 0)).any())
    ids, pad_mask = left_pad(prompts, dec.pad_token_id, dev)
    capacity = ids.shape[1] + cfg.max_new_tokens + 1
    fan_out = torch.arange(B, device=dev).repeat_interleave(N)  # [B*N]
    policy = open_stream(dec.policy, prompts, ids, pad_mask, capacity, prompt_cache)
    policy.select_rows(fan_out)
    rm = None
    if guided and dec.reward is not None:
        rm = Stream(dec.reward, ids, pad_mask, capacity)
        rm.select_rows(fan_out)
    scorer = rm if rm is not None else policy
    kv = kv_bytes([policy] + ([rm] if rm is not None else []))  # N rows per prompt row
    gen = new_generator(cfg.seed, dev)
    eos = set() if cfg.ignore_eos else dec.eos_ids
    eos_t = torch.tensor(sorted(eos), dtype=torch.int64, device=dev)
    pad_id = dec.pad_token_id
    rows = [RowStopper(dec.policy.tokenizer, eos, tuple(cfg.stop)) for _ in range(B)]
    steps: list[list] = [[] for _ in range(B)]
    done = [False] * B
    active = list(range(B))  # the original row of each of the A batch rows (finished rows leave the batch)
    produced = 0
    while produced < cfg.max_new_tokens and not all(done):
        A = len(active)
        m = min(cfg.block_size, cfg.max_new_tokens - produced)
        block = torch.empty(A * N, m, dtype=torch.int64, device=dev)  # [A*N, m]
        finished = torch.zeros(A * N, dtype=torch.bool, device=dev)
        end_state = scorer.last_hidden.clone()  # [A*N, d]
        for j in range(m):
            logits = filter_logits(dec.policy.logits(policy.last_hidden), cfg.temperature, cfg.top_k, cfg.top_p)
            tok = torch.where(finished, pad_id, sample_tokens(logits, gen))  # [A*N]
            block[:, j] = tok
            policy.step(tok)
            if rm is not None:
                rm.step(tok)
            end_state = torch.where(finished[:, None], end_state, scorer.last_hidden)
            finished |= torch.isin(tok, eos_t)
        zeros = torch.zeros(A, N, device=dev)
        if guided:
            # scores w * r_u: argmax r_u for w > 0; a w = 0 row scores all 0 and keeps sample 0 (plain sampling)
            best, _, rewards = score_select(end_state.view(A, N, -1), bank.W, bank.b, slots, zeros, weights, GREEDY,
                                            backend=dec.backend, check_values=False)  # [A], [A, N]; slots checked
        else:
            best, rewards = torch.zeros(A, dtype=torch.int64, device=dev), zeros
        winners = torch.arange(A, device=dev) * N + best  # [A]
        kept = block[winners].tolist()
        for i, b in enumerate(active):
            if cfg.return_scores:
                steps[b].append({"block": block.view(A, N, m)[i].tolist(), "reward": rewards[i].tolist(),
                                 "chosen": int(best[i])})
            for t in kept[i]:
                done[b] = rows[b].push(t)
                if done[b]:
                    break
        produced += m
        if produced < cfg.max_new_tokens and not all(done):
            # every sample of an unfinished row continues from the row's winner; finished rows leave the batch
            keep = [i for i, b in enumerate(active) if not done[b]]
            index = torch.tensor(keep, device=dev)
            regroup = winners[index].repeat_interleave(N)
            policy.select_rows(regroup)
            if rm is not None:
                rm.select_rows(regroup)
            slots, weights = slots[index], weights[index]
            active = [active[i] for i in keep]
    return finish(rows, users, steps if cfg.return_scores else [None] * B, dec.policy.tokenizer is not None, kv)
