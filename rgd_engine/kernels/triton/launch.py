"""Launchers for the Triton kernels: validate dtypes, allocate outputs and partials, launch with the settings of
settings.py (bounded block sizes)."""
from __future__ import annotations

import torch
import triton

from ..outputs import selection_outputs, topk_outputs
from ..reference import SAMPLE
from . import kernels
from .settings import BLOCK_B, LmheadPlan, lmhead_plan, select_tile

def _check_dtypes(device: torch.device, *tensors: torch.Tensor):
    if device.type == "cpu" and any(t.dtype != torch.float32 for t in tensors):
        raise TypeError("triton backend on CPU (TRITON_INTERPRET=1) supports float32 only, got "
                        + ", ".join(str(t.dtype) for t in tensors))


def lmhead_topk(hidden, weight, k, out=None, plan: LmheadPlan | None = None):
    # hidden [B, d], weight [V, d] -> logprob [B, k], ids [B, k], lse [B]; plan: settings.lmhead_plan by default
    _check_dtypes(hidden.device, hidden, weight)
    hidden, weight = hidden.contiguous(), weight.contiguous()
    B, D = hidden.shape
    V = weight.shape[0]
    dev = hidden.device
    plan = plan or lmhead_plan(V, k, dev.type)
    if out is None:
        out = topk_outputs(B, k, dev)
    logprob, ids, lse = out
    if B == 0:
        return logprob, ids, lse
    m = torch.empty(B, plan.nb, device=dev)  # [B, NB]
    s = torch.empty(B, plan.nb, device=dev)
    v = torch.empty(B, plan.nb, plan.kc, device=dev)  # [B, NB, KC]
    i = torch.empty(B, plan.nb, plan.kc, device=dev, dtype=torch.int64)
    kernels.lmhead_partial_kernel[(plan.nb, triton.cdiv(B, BLOCK_B))](
        hidden, weight, m, s, v, i, B, V, D, plan.kc,
        BLOCK_B=BLOCK_B, BLOCK_V=plan.block_v, BLOCK_D=plan.block_d, num_warps=plan.num_warps)
    for rnd in plan.rounds:
        if rnd.final:  # out_s is unused in the final round: lse stands in for it
            nxt = (lse, lse, logprob, ids)
        else:
            nxt = (torch.empty(B, rnd.n_out, device=dev), torch.empty(B, rnd.n_out, device=dev),
                   torch.empty(B, rnd.n_out, rnd.k_out, device=dev),
                   torch.empty(B, rnd.n_out, rnd.k_out, device=dev, dtype=torch.int64))
        kernels.lmhead_merge_kernel[(B, rnd.n_out)](
            m, s, v, i, *nxt, rnd.n_in, rnd.k_in, rnd.group, rnd.n_out, rnd.k_out,
            FINAL=rnd.final, BLOCK_G=rnd.block_g, BLOCK_C=rnd.block_c, num_warps=rnd.num_warps)
        m, s, v, i = nxt
    return logprob, ids, lse


def score_select(cand_hidden, bank_w, bank_b, slot, logprob, weight, mode, tau, rand, out=None):
    # cand_hidden [B, k, d], bank_w [U, d], bank_b [U], slot [B], logprob [B, k], weight [B], rand [B]
    dev = cand_hidden.device
    _check_dtypes(dev, cand_hidden, bank_w)
    B, k, D = cand_hidden.shape
    sample = mode == SAMPLE
    rand = rand.float().contiguous() if sample else torch.zeros(1, device=dev)
    if out is None:
        out = selection_outputs(B, k, dev)
    chosen, scores, rewards = out
    if B == 0:
        return chosen, scores, rewards
    tile = select_tile(B, k, D, dev.type)
    kernels.score_select_kernel[(triton.cdiv(B, tile.block_r),)](
        cand_hidden.contiguous(), bank_w.contiguous(), bank_b.float().contiguous(), slot.long().contiguous(),
        logprob.float().contiguous(), weight.float().contiguous(), rand, chosen, scores, rewards, B, k, D,
        float(tau), SAMPLE=sample, BLOCK_R=tile.block_r, BLOCK_K=tile.block_k, BLOCK_D=tile.block_d)
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
        out = selection_outputs(B, k, dev)
    chosen, scores, rewards = out
    if B == 0:
        return chosen, scores, rewards
    tile = select_tile(B, k, D, dev.type, rows=False)
    kernels.gather_score_select_kernel[(B,)](
        query.float().contiguous(), emb.contiguous(), cand_ids.long().contiguous(), offset.float().contiguous(),
        logprob.float().contiguous(), weight.float().contiguous(), rand, chosen, scores, rewards, k, D, float(ratio),
        float(tau), SAMPLE=sample, BLOCK_K=tile.block_k, BLOCK_D=tile.block_d)
    return chosen, scores, rewards
