"""cpp.decode_attention (csrc/cpu/decode_attention.cpp), the DecoderStack's attention, against a float64 softmax
written here. In the decoder stack: tests/engine/test_decoder_stack.py."""
import math

import pytest
import torch
from seeding import fresh_seed  # noqa: F401

from rgd_engine.kernels import cpp

DTYPES = [torch.float32, torch.bfloat16]
native = pytest.mark.parametrize("dtype", [pytest.param(d, marks=pytest.mark.skipif(
    not cpp.small_linear_native(d), reason=f"this CPU cannot run decode_attention in {d}")) for d in DTYPES])

# (B, nq, H, Hkv, D, S, T): one-token steps of the demo model's shape (GQA 3) and rgd-shared's 10-row trees; MHA
# and MQA; D below, at and past the 16 / 32 lanes and past one 128-column slice (odd D too); T below, at and past
# the 16-slot blocks, S > T (slots past T poisoned) and T = S.
SHAPES = [(1, 1, 9, 3, 64, 300, 257), (1, 10, 9, 3, 64, 320, 300), (2, 3, 5, 1, 8, 40, 17), (3, 2, 6, 3, 10, 33, 33),
          (1, 16, 4, 4, 12, 20, 1), (2, 1, 4, 2, 130, 70, 65), (1, 5, 8, 2, 72, 50, 50), (2, 4, 2, 2, 7, 31, 16)]


def _reference(q, k, v, mask):
    """float64 softmax(q k^T / sqrt(D) + mask) v, query head h on kv head h // g, written as the definition."""
    B, nq, H, D = q.shape
    T, g = mask.shape[-1], H // k.shape[1]
    out = torch.empty(B, nq, H, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            kk, vv = k[b, h // g, :T].double(), v[b, h // g, :T].double()  # [T, D]
            e = q[b, :, h].double() @ kk.t() / math.sqrt(D) + mask[b, 0].double()  # [nq, T]
            out[b, :, h] = torch.softmax(e, dim=-1) @ vv
    return out


def _inputs(B, nq, H, Hkv, D, S, T, dtype, gen):
    q = torch.randn(B, nq, H, D, generator=gen).to(dtype)
    k = torch.randn(B, Hkv, S, D, generator=gen).to(dtype)
    v = torch.randn(B, Hkv, S, D, generator=gen).to(dtype)
    k[:, :, T:] = float("nan")  # poisoned: slots past T must not be read
    v[:, :, T:] = float("nan")
    mask = torch.randn(B, 1, nq, T, generator=gen)
    blocked = torch.rand(B, 1, nq, T, generator=gen) < 0.3  # as the engine masks padding and other candidates
    blocked[..., -1] = False  # every row sees at least one slot
    mask = mask.masked_fill(blocked, torch.finfo(dtype).min).to(dtype)
    return q, k, v, mask


@native
@pytest.mark.parametrize("B,nq,H,Hkv,D,S,T", SHAPES)
def test_decode_attention_matches_a_float64_softmax(dtype, B, nq, H, Hkv, D, S, T, fresh_seed):
    q, k, v, mask = _inputs(B, nq, H, Hkv, D, S, T, dtype, torch.Generator().manual_seed(fresh_seed))
    out = torch.full((B, nq, H, D), float("nan"), dtype=dtype)  # poisoned: every element must be written
    got = cpp.decode_attention(q, k, v, mask, out=out)
    assert got is out
    ref = _reference(q, k, v, mask)
    # fp32 scores, exp (about 1 ulp) and sums: a few 1e-6 of the values' scale; bf16 adds the output's rounding
    vmax = v[:, :, :T].double().abs().amax()
    rounding = 2.0 ** -8 if dtype == torch.bfloat16 else 0.0
    bound = rounding * ref.abs() + 2e-5 * vmax
    err = (got.double() - ref).abs()
    assert not got.isnan().any(), f"seed {fresh_seed}: unwritten or NaN outputs"
    assert (err <= bound).all(), f"seed {fresh_seed}: max excess {(err - bound).max().item():.3g}"


@native
def test_decode_attention_agrees_with_torch_sdpa(dtype, fresh_seed):
    B, nq, H, Hkv, D, T = 2, 3, 6, 2, 32, 45
    q, k, v, mask = _inputs(B, nq, H, Hkv, D, T, T, dtype, torch.Generator().manual_seed(fresh_seed))
    g = H // Hkv
    want = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1), attn_mask=mask)
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cpp.decode_attention(q, k, v, mask), want.transpose(1, 2), **tol,
                               msg=lambda m: f"seed {fresh_seed}: {m}")


@native
def test_decode_attention_rejects_bad_inputs_with_a_message_that_names_them(dtype):
    q, k, v, mask = _inputs(1, 2, 4, 2, 8, 10, 6, dtype, torch.Generator().manual_seed(0))
    other = torch.float32 if dtype == torch.bfloat16 else torch.bfloat16
    cases = [
        ((q, k.to(other), v, mask), "k must be"),
        ((q, k, v, mask.to(other)), "mask must be"),
        ((q[:, :, :3], k, v, mask), r"query heads \(3\) must be a multiple of the kv heads \(2\)"),
        ((q, k, v, torch.zeros(1, 1, 2, 11, dtype=dtype)), "mask covers 11 slots"),
        ((q, k, v[:, :, :5].contiguous(), mask), r"v must have shape \[1, 2, 10, 8\]"),
        ((q[0], k, v, mask), r"q must be \[B, nq, H, D\]"),
    ]
    for (q_, k_, v_, m_), pattern in cases:
        with pytest.raises(RuntimeError, match=pattern):
            cpp.decode_attention(q_, k_, v_, m_)
