"""Launchers for the Triton kernels: validate dtypes, allocate outputs and partials, pick the grid."""
from __future__ import annotations

import torch
import triton

from ..reference import SAMPLE
from . import kernels

BLOCK_B = 16  # tl.dot needs >= 16 rows; B = 1 decode wastes the padding but W is read once per block
BLOCK_D = 64


def _block_v(device: torch.device) -> int:
    # GPU: 256-row V-blocks give ~200 programs for V = 49k (fills an H100/H200). Interpreter: fewer,
    # larger programs because each program costs Python overhead.
    return 256 if device.type == "cuda" else 4096


def _block_rows(device: torch.device, B: int, block_k: int) -> int:
    # Rows per score_select program. GPU: a [4, BLOCK_K, BLOCK_D] tile keeps registers in check. Interpreter:
    # many rows per program, because each program costs milliseconds of Python.
    cap = 4 if device.type == "cuda" else max(1, 16384 // block_k)
    return min(cap, triton.next_power_of_2(B))


def _check_dtypes(device: torch.device, *tensors: torch.Tensor):
    if device.type == "cpu" and any(t.dtype != torch.float32 for t in tensors):
        raise TypeError("triton backend on CPU (TRITON_INTERPRET=1) supports float32 only, got "
                        + ", ".join(str(t.dtype) for t in tensors))


def lmhead_topk(hidden, weight, k, out=None):
    # hidden [B, d], weight [V, d] -> logprob [B, k], ids [B, k], lse [B]
    _check_dtypes(hidden.device, hidden, weight)
    hidden, weight = hidden.contiguous(), weight.contiguous()
    B, D = hidden.shape
    V = weight.shape[0]
    dev = hidden.device
    block_v = _block_v(dev)
    nb = triton.cdiv(V, block_v)
    kc = min(k, block_v)  # one V-block holds at most block_v candidates
    part_m = torch.empty(B, nb, device=dev)  # [B, NB]
    part_s = torch.empty(B, nb, device=dev)
    part_v = torch.empty(B, nb, kc, device=dev)  # [B, NB, KC]
    part_i = torch.empty(B, nb, kc, device=dev, dtype=torch.int64)
    if out is None:
        out = (torch.empty(B, k, device=dev), torch.empty(B, k, device=dev, dtype=torch.int64),
               torch.empty(B, device=dev))
    logprob, ids, lse = out
    if B == 0:
        return logprob, ids, lse
    kernels.lmhead_partial_kernel[(nb, triton.cdiv(B, BLOCK_B))](
        hidden, weight, part_m, part_s, part_v, part_i, B, V, D, kc,
        BLOCK_B=BLOCK_B, BLOCK_V=block_v, BLOCK_D=BLOCK_D, num_warps=8)
    kernels.lmhead_merge_kernel[(B,)](
        part_m, part_s, part_v, part_i, logprob, ids, lse, nb, kc, k,
        BLOCK_NB=triton.next_power_of_2(nb), BLOCK_C=triton.next_power_of_2(nb * kc))
    return logprob, ids, lse


def score_select(cand_hidden, bank_w, bank_b, slot, logprob, weight, mode, tau, rand, out=None):
    # cand_hidden [B, k, d], bank_w [U, d], bank_b [U], slot [B], logprob [B, k], weight [B], rand [B]
    dev = cand_hidden.device
    _check_dtypes(dev, cand_hidden, bank_w)
    B, k, D = cand_hidden.shape
    sample = mode == SAMPLE
    rand = rand.float().contiguous() if sample else torch.zeros(1, device=dev)
    if out is None:
        out = (torch.empty(B, device=dev, dtype=torch.int64), torch.empty(B, k, device=dev),
               torch.empty(B, k, device=dev))
    chosen, scores, rewards = out
    if B == 0:
        return chosen, scores, rewards
    block_k = max(2, triton.next_power_of_2(k))
    block_r = _block_rows(dev, B, block_k)
    kernels.score_select_kernel[(triton.cdiv(B, block_r),)](
        cand_hidden.contiguous(), bank_w.contiguous(), bank_b.float().contiguous(), slot.long().contiguous(),
        logprob.float().contiguous(), weight.float().contiguous(), rand, chosen, scores, rewards, B, k, D,
        float(tau), SAMPLE=sample, BLOCK_R=block_r, BLOCK_K=block_k, BLOCK_D=min(BLOCK_D, triton.next_power_of_2(D)))
    return chosen, scores, rewards


def gather_score_select(query, emb, cand_ids, offset, logprob, weight, ratio, mode, tau, rand, out=None):
    # query [B, d], emb [V, d], cand_ids [B, k], offset [B], logprob [B, k], weight [B], rand [B]
    dev = query.device
    _check_dtypes(dev, query, emb)
    B, k = cand_ids.shape
    D = query.shape[1]
    sample = mode == SAMPLE
    rand = rand.float().contiguous() if sample else torch.zeros(1, device=dev)
    if out is None:
        out = (torch.empty(B, device=dev, dtype=torch.int64), torch.empty(B, k, device=dev),
               torch.empty(B, k, device=dev))
    chosen, scores, rewards = out
    if B == 0:
        return chosen, scores, rewards
    kernels.gather_score_select_kernel[(B,)](
        query.float().contiguous(), emb.contiguous(), cand_ids.long().contiguous(), offset.float().contiguous(),
        logprob.float().contiguous(), weight.float().contiguous(), rand, chosen, scores, rewards, k, D, float(ratio),
        float(tau), SAMPLE=sample, BLOCK_K=max(2, triton.next_power_of_2(k)),
        BLOCK_D=min(BLOCK_D, triton.next_power_of_2(D)))
    return chosen, scores, rewards
