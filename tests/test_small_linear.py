"""cpp.small_linear (csrc/cpu/small_linear.cpp): y = x W^T + b for few-row x, against a float64 product written
here. Where the fast Llama forward uses it: tests/engine/test_fast_forward.py."""
import pytest
import torch
import torch.nn.functional as F
from seeding import fresh_seed  # noqa: F401

from rgd_engine.kernels import cpp

DTYPES = [torch.float32, torch.bfloat16]
native = pytest.mark.parametrize("dtype", [pytest.param(d, marks=pytest.mark.skipif(
    not cpp.small_linear_native(d), reason=f"this CPU cannot run small_linear in {d}")) for d in DTYPES])

# M: one row, 2 - 8 rows (one pass, one weight row at a time), past 8 (balanced passes of <= 6 rows that read weight
# rows in pairs: 9 = 4 + 5, 12 = 6 + 6, 17 = 5 + 6 + 6) and past SMALL_M; K: below, at and past the 16 / 32 lanes
# and the two-vector step (tails masked); N: below, at and past the 16-row groups, with odd rows left after the
# pairs of a group.
SHAPES = [(1, 1, 1), (1, 5, 31), (1, 7, 576), (1, 33, 48), (2, 3, 33), (3, 9, 64), (4, 13, 65), (5, 2, 127),
          (7, 16, 576), (8, 16, 64), (9, 17, 40), (10, 97, 200), (12, 18, 65), (13, 1, 33), (16, 31, 1536),
          (17, 6, 96)]


def _reference(x, w, b):
    """float64 x w^T + b and the bound sum_k |x_mk w_nk| that scales the summation error."""
    ref = x.double() @ w.double().t()
    mag = x.double().abs() @ w.double().abs().t()
    if b is not None:
        ref, mag = ref + b.double(), mag + b.double().abs()
    return ref, mag


@native
@pytest.mark.parametrize("M,N,K", SHAPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_small_linear_matches_a_float64_product(dtype, M, N, K, with_bias, fresh_seed):
    x, w = torch.randn(M, K).to(dtype), torch.randn(N, K).to(dtype)
    b = torch.randn(N).to(dtype) if with_bias else None
    out = torch.full((M, N), float("nan"), dtype=dtype)  # poisoned: every element must be written
    got = cpp.small_linear(x, w, b, out=out)
    assert got is out
    ref, mag = _reference(x, w, b)
    # fp32 sums: a few ulps of sum |x w|; bf16 adds one rounding of the result (2^-9 relative, RNE)
    rounding = 2.0 ** -8 if dtype == torch.bfloat16 else 0.0
    bound = rounding * ref.abs() + 2.0 ** -20 * mag + 1e-30
    err = (got.double() - ref).abs()
    assert not got.isnan().any(), f"seed {fresh_seed}: unwritten outputs"
    assert (err <= bound).all(), f"seed {fresh_seed}: max excess {(err - bound).max().item():.3g}"


@native
def test_small_linear_rounds_bf16_to_nearest_even_and_keeps_nan(dtype, fresh_seed):
    if dtype != torch.bfloat16:
        pytest.skip("rounding of the bf16 output")
    # Exact products (small integers times powers of two) so the fp32 sum is exact: the output is then the
    # round-to-nearest-even of a known value; 257 lies halfway between bf16 neighbours 256 and 258.
    x = torch.tensor([[1.0, 1.0], [1.0, float("nan")]], dtype=torch.bfloat16)
    w = torch.tensor([[256.0, 1.0], [256.0, 3.0]], dtype=torch.bfloat16)
    got = cpp.small_linear(x, w)
    assert got[0].tolist() == [256.0, 260.0]  # 257 -> 256 (even), 259 -> 260 (even)
    assert got[1].isnan().all()


@native
def test_small_linear_agrees_with_torch_linear(dtype, fresh_seed):
    x, w, b = torch.randn(7, 300).to(dtype), torch.randn(45, 300).to(dtype), torch.randn(45).to(dtype)
    tol = dict(atol=3e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(cpp.small_linear(x, w, b), F.linear(x, w, b), **tol,
                               msg=lambda m: f"seed {fresh_seed}: {m}")


@native
def test_small_linear_rejects_bad_inputs_with_a_message_that_names_them(dtype):
    x, w = torch.randn(2, 8).to(dtype), torch.randn(3, 8).to(dtype)
    other = torch.float32 if dtype == torch.bfloat16 else torch.bfloat16
    cases = [
        ((x.to(other), w, None), "x must be"),
        ((torch.randn(2, 9).to(dtype), w, None), r"x must have shape \[2, 8\]"),
        ((x, torch.randn(8, 3).to(dtype).t(), None), "weight must be contiguous"),
        ((x, w.half(), None), "weight must be float32 or bfloat16, got float16"),
        ((x, w, torch.randn(4).to(dtype)), r"bias must have shape \[3\]"),
        ((x[0], w, None), r"x must be \[M, K\]"),
    ]
    for (a, b_, bias), pattern in cases:
        with pytest.raises(RuntimeError, match=pattern):
            cpp._C.small_linear_out(a, b_, bias, torch.empty(a.shape[0] if a.dim() == 2 else 1, 3, dtype=dtype))
    with pytest.raises(RuntimeError, match=r"out must have shape \[2, 3\]"):
        cpp._C.small_linear_out(x, w, None, torch.empty(3, 2, dtype=dtype))


def _round_bf16(t64: torch.Tensor) -> torch.Tensor:
    """float64 -> nearest bf16 value (via float32, exact for these magnitudes), as float64."""
    return t64.float().to(torch.bfloat16).double()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,d", [(1, 1), (1, 576), (3, 33), (8, 100), (2, 1537)])
def test_rms_norm_matches_hf_rmsnorm_written_in_float64(dtype, M, d, fresh_seed):
    x, w = (torch.randn(M, d) * 3).to(dtype), torch.randn(d).to(dtype)
    eps = 1e-5
    out = torch.full((M, d), float("nan"), dtype=dtype)
    got = cpp.rms_norm(x, w, eps, out=out)
    assert got is out and not got.isnan().any(), f"seed {fresh_seed}: unwritten outputs"
    x64, w64 = x.double(), w.double()
    normed = x64 / torch.sqrt((x64 ** 2).mean(-1, keepdim=True) + eps)
    if dtype == torch.bfloat16:
        # HF rounds the normalized x to bf16, then the product with the weight: allow one bf16 step at each
        ref = w64 * _round_bf16(normed)
        bound = 2.0 ** -7 * ref.abs() + 2.0 ** -8 * (w64 * normed).abs() + 1e-30
    else:
        ref = w64 * normed
        bound = 1e-5 * ref.abs() + 1e-6
    err = (got.double() - ref).abs()
    assert (err <= bound).all(), f"seed {fresh_seed}: max excess {(err - bound).max().item():.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_equals_the_torch_formula_to_one_rounding(dtype, fresh_seed):
    from rgd_engine.models.fast_llama import rms_norm

    x, w = torch.randn(5, 576).to(dtype), torch.randn(576).to(dtype)
    want = rms_norm(x, w, 1e-6)
    got = cpp.rms_norm(x, w, 1e-6)
    # the fp32 statistics are summed in another order: at most one rounding step of the output apart
    step = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -20
    assert ((got.double() - want.double()).abs() <= step * want.double().abs() + 1e-30).all(), f"seed {fresh_seed}"
    if dtype == torch.bfloat16:  # a 1-ulp fp32 difference of the statistic rarely moves a bf16 rounding
        assert (got == want).float().mean() > 0.95, f"seed {fresh_seed}: most elements are bit-identical"


def test_rms_norm_rejects_bad_inputs():
    x, w = torch.randn(2, 8), torch.randn(8)
    for args, pattern in [((x, torch.randn(7), 1e-6), r"weight must have shape \[8\]"),
                          ((x.bfloat16(), w, 1e-6), "x must be"),
                          ((x, w, -1.0), "eps must be >= 0")]:
        with pytest.raises(RuntimeError, match=pattern):
            cpp.rms_norm(*args)
