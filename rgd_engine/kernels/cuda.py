"""CUDA backend: thin wrapper over the kernels in `rgd_engine._C_cuda` (csrc/cuda).

Built only where torch has CUDA and nvcc exists (see build_ext.py). The wrapper normalizes the small
tensors and allocates outputs; `out=` lets a caller (or a test) supply preallocated outputs.
"""
from __future__ import annotations

import torch

from .outputs import selection_outputs, topk_outputs
from .reference import SAMPLE

try:
    from rgd_engine import _C_cuda
    _IMPORT_ERROR = None
except ImportError as e:  # not built on this machine: availability() says so
    _C_cuda = None
    _IMPORT_ERROR = e

_NATIVE = (torch.float32, torch.float16, torch.bfloat16)


def availability(device_type: str):
    if device_type != "cuda":
        return f"the CUDA backend runs on CUDA tensors only, not {device_type}"
    if _C_cuda is None:
        return (f"extension rgd_engine._C_cuda is not importable ({_IMPORT_ERROR}); it is built by "
                "`pip install --no-build-isolation -e .` when torch has CUDA and nvcc is on PATH")
    if not torch.cuda.is_available():
        return "no CUDA device is visible"
    return None


def _matrix(t: torch.Tensor) -> torch.Tensor:
    return (t if t.dtype in _NATIVE else t.float()).contiguous()


def lmhead_topk(hidden, weight, k, out=None):
    # hidden [B, d], weight [V, d] -> logprob [B, k], ids [B, k], lse [B]
    B, dev = hidden.shape[0], hidden.device
    if out is None:
        out = topk_outputs(B, k, dev)
    logprob, ids, lse = out
    _C_cuda.lmhead_topk_out(hidden.float().contiguous(), _matrix(weight), int(k), logprob, ids, lse)
    return logprob, ids, lse


def score_select(cand_hidden, bank_w, bank_b, slot, logprob, weight, mode, tau, rand, out=None):
    # cand_hidden [B, k, d], bank_w [U, d], bank_b [U], slot [B], logprob [B, k], weight [B], rand [B]
    B, k, _ = cand_hidden.shape
    dev = cand_hidden.device
    if cand_hidden.dtype == bank_w.dtype:
        cand_hidden, bank_w = _matrix(cand_hidden), _matrix(bank_w)
    else:
        cand_hidden, bank_w = cand_hidden.float().contiguous(), bank_w.float().contiguous()
    sample = mode == SAMPLE
    rand = rand.float().contiguous() if sample else torch.empty(0, device=dev)
    if out is None:
        out = selection_outputs(B, k, dev)
    chosen, scores, rewards = out
    _C_cuda.score_select_out(cand_hidden, bank_w, bank_b.float().contiguous(), slot.long().contiguous(),
                             logprob.float().contiguous(), weight.float().contiguous(), sample, float(tau), rand,
                             chosen, scores, rewards)
    return chosen, scores, rewards


def gather_score_select(query, emb, cand_ids, offset, logprob, weight, ratio, mode, tau, rand, out=None):
    # query [B, d], emb [V, d], cand_ids [B, k], offset [B], logprob [B, k], weight [B], rand [B]
    B, k = cand_ids.shape
    dev = query.device
    sample = mode == SAMPLE
    rand = rand.float().contiguous() if sample else torch.empty(0, device=dev)
    if out is None:
        out = selection_outputs(B, k, dev)
    chosen, scores, rewards = out
    _C_cuda.gather_score_select_out(query.float().contiguous(), _matrix(emb), cand_ids.long().contiguous(),
                                    offset.float().contiguous(), logprob.float().contiguous(),
                                    weight.float().contiguous(), float(ratio), sample, float(tau), rand, chosen,
                                    scores, rewards)
    return chosen, scores, rewards
