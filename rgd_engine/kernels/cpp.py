"""C++ CPU backend: thin wrapper over the OpenMP kernels in `rgd_engine._C` (csrc/cpu).

The wrapper normalizes dtypes/layout (small tensors only; W is passed as is when float32 or bfloat16) and
allocates the outputs; `out=` lets a caller (or a test) supply preallocated outputs instead.
"""
from __future__ import annotations

import torch

from .outputs import selection_outputs, topk_outputs
from .reference import SAMPLE

try:
    from rgd_engine import _C
    _IMPORT_ERROR = None
except ImportError as e:  # not built: availability() says so, dispatch raises or falls back
    _C = None
    _IMPORT_ERROR = e

_NATIVE = (torch.float32, torch.bfloat16)


def availability(device_type: str):
    if _C is None:
        return (f"extension rgd_engine._C is not importable ({_IMPORT_ERROR}); build it with "
                "`pip install --no-build-isolation -e .`")
    if device_type != "cpu":
        return f"the C++ backend runs on CPU tensors only, not {device_type}"
    return None


def _matrix(t: torch.Tensor) -> torch.Tensor:
    # float16 and others are widened exactly to float32 (a copy); float32 / bfloat16 go through untouched.
    return (t if t.dtype in _NATIVE else t.float()).contiguous()


def lmhead_topk(hidden, weight, k, out=None):
    # hidden [B, d], weight [V, d] -> logprob [B, k], ids [B, k], lse [B]
    B = hidden.shape[0]
    if out is None:
        out = topk_outputs(B, k)
    logprob, ids, lse = out
    weight = _matrix(weight)
    # bf16 x bf16 goes to the AVX512-BF16 dot products; any other hidden is widened to fp32
    hidden = hidden.contiguous() if hidden.dtype == weight.dtype == torch.bfloat16 else hidden.float().contiguous()
    _C.lmhead_topk_out(hidden, weight, int(k), logprob, ids, lse)
    return logprob, ids, lse


def score_select(cand_hidden, bank_w, bank_b, slot, logprob, weight, mode, tau, rand, out=None):
    # cand_hidden [B, k, d], bank_w [U, d], bank_b [U], slot [B], logprob [B, k], weight [B], rand [B]
    B, k, _ = cand_hidden.shape
    if cand_hidden.dtype == bank_w.dtype:
        cand_hidden, bank_w = _matrix(cand_hidden), _matrix(bank_w)
    else:
        cand_hidden, bank_w = cand_hidden.float().contiguous(), bank_w.float().contiguous()
    sample = mode == SAMPLE
    rand = rand.float().contiguous() if sample else torch.empty(0)
    if out is None:
        out = selection_outputs(B, k)
    chosen, scores, rewards = out
    _C.score_select_out(cand_hidden, bank_w, bank_b.float().contiguous(), slot.long().contiguous(),
                        logprob.float().contiguous(), weight.float().contiguous(), sample, float(tau), rand,
                        chosen, scores, rewards)
    return chosen, scores, rewards


def gather_score_select(query, emb, cand_ids, offset, logprob, weight, ratio, mode, tau, rand, out=None):
    # query [B, d], emb [V, d], cand_ids [B, k], offset [B], logprob [B, k], weight [B], rand [B]
    B, k = cand_ids.shape
    sample = mode == SAMPLE
    rand = rand.float().contiguous() if sample else torch.empty(0)
    if out is None:
        out = selection_outputs(B, k)
    chosen, scores, rewards = out
    _C.gather_score_select_out(query.float().contiguous(), _matrix(emb), cand_ids.long().contiguous(),
                               offset.float().contiguous(), logprob.float().contiguous(), weight.float().contiguous(),
                               float(ratio), sample, float(tau), rand, chosen, scores, rewards)
    return chosen, scores, rewards


def small_linear_native(dtype: torch.dtype) -> bool:
    """Whether `small_linear` runs for weights of `dtype` on this CPU (float32: AVX-512F/BW/VL; bfloat16: also
    AVX512-BF16)."""
    return _C is not None and dtype in _NATIVE and _C.small_linear_is_native(dtype == torch.bfloat16)


def small_linear(x, weight, bias=None, out=None):
    # x [M, K], weight [N, K], bias [N] or None, all of weight's dtype (float32 | bfloat16) -> out [M, N]
    if out is None:
        out = torch.empty(x.shape[0], weight.shape[0], dtype=weight.dtype)
    _C.small_linear_out(x.contiguous(), weight, bias, out)
    return out


def rms_norm(x, weight, eps: float, out=None):
    # x [M, d], weight [d] (float32 | bfloat16, the same) -> out [M, d]: weight * (x / sqrt(mean(x^2) + eps)),
    # the statistics in float32 and the normalized x rounded to x's dtype before the weight, as HF's RMSNorm
    if out is None:
        out = torch.empty_like(x)
    _C.rms_norm_out(x.contiguous(), weight, float(eps), out)
    return out


def decode_attention(q, k, v, mask, out=None):
    # q [B, nq, H, D], k / v [B, Hkv, S, D], mask [B, 1, nq, T] additive over slots [0, T), one dtype (float32 |
    # bfloat16, where small_linear_native) -> out [B, nq, H, D] = softmax(q k^T / sqrt(D) + mask) v, query head h
    # reading kv head h // (H // Hkv); fp32 softmax and sums, rounded once to the dtype (DecoderStack's attention)
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    _C.decode_attention_out(q.contiguous(), k, v, mask.contiguous(), out)
    return out


def decoder_stack(layers, final_norm, n_heads: int, n_kv: int, head_dim: int, eps: float):
    """The C++ DecoderStack over a Llama-family model's layers (models/fast_llama.py): per layer
    [w_qkv, b_qkv | None, w_o, b_o | None, w_gate_up, w_down, norm1, norm2], contiguous, one dtype (float32 |
    bfloat16, where small_linear_native). `.forward(x [B, q, d], cos [B, q, D], sin [B, q, D], mask [B, 1, q, T],
    kv [L, 2, B, Hkv, S, D], start)` -> hidden [B, q, d] after the final norm, new K/V written at [start, T)."""
    return _C.DecoderStack(layers, final_norm, int(n_heads), int(n_kv), int(head_dim), float(eps))
