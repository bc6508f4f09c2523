"""Triton backend: fused kernels (kernels.py) behind launchers (launch.py).

Available on CUDA when triton imports and a GPU is visible; on CPU only under TRITON_INTERPRET=1
(the interpreter, float32 only), which is how the test-suite runs it.
"""
from __future__ import annotations

import os

import torch


def availability(device_type: str):
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return f"triton is not importable ({e})"
    if device_type == "cuda":
        return None if torch.cuda.is_available() else "no CUDA device is visible"
    if device_type == "cpu":
        if os.environ.get("TRITON_INTERPRET") == "1":
            return None
        return "on CPU the triton kernels run only in the interpreter: set TRITON_INTERPRET=1 (float32 only, slow)"
    return f"triton backend does not support device type {device_type!r}"


def lmhead_topk(hidden, weight, k, out=None):
    from .launch import lmhead_topk as impl

    return impl(hidden, weight, k, out=out)


def score_select(cand_hidden, bank_w, bank_b, slot, logprob, weight, mode, tau, rand, out=None):
    from .launch import score_select as impl

    return impl(cand_hidden, bank_w, bank_b, slot, logprob, weight, mode, tau, rand, out=out)


def gather_score_select(query, emb, cand_ids, offset, logprob, weight, ratio, mode, tau, rand, out=None):
    from .launch import gather_score_select as impl

    return impl(query, emb, cand_ids, offset, logprob, weight, ratio, mode, tau, rand, out=out)
