"""Sampled selection: identical draws across backends, and the right distribution.

score_select(mode="sample") is an inverse-CDF draw from softmax(scores / tau) (gather_score_select shares the
selection code); with the same uniform `rand` every backend must pick the candidate of a numpy float64 oracle written
here (away from rounding distance of a CDF step), the empirical
frequencies over many draws must follow softmax(scores / tau), and a -inf (zero-probability) candidate is
never drawn.
"""
import math

import numpy as np
import pytest
import torch
from seeding import fresh_seed  # noqa: F401  (autouse: a printed fresh seed per test)

from rgd_engine.kernels import dispatch, reference

BACKENDS = ("torch", "cpp", "triton", "cuda")
N_DRAWS = 100_000


def backend_module(name, device):
    reason = dispatch.unavailable_reason(name, device.type)
    if reason is not None:
        pytest.skip(f"{name} on {device.type}: {reason}")
    return dispatch._load(name)


def repeated_row(n, k, d, device, seed):
    """n copies of one random row (with a head and a -inf candidate at index 2), uniform rands."""
    g = torch.Generator().manual_seed(seed)
    cand = torch.randn(1, k, d, generator=g).expand(n, k, d).contiguous()
    bank_w, bank_b = torch.randn(3, d, generator=g), torch.randn(3, generator=g)
    slot = torch.full((n,), 1, dtype=torch.int64)
    logprob = (-torch.rand(1, k, generator=g) * 3).expand(n, k).contiguous()
    logprob[:, 2] = -math.inf
    weight = torch.full((n,), 0.5)
    rand = torch.rand(n, generator=g)
    return [t.to(device) for t in (cand, bank_w, bank_b, slot, logprob, weight, rand)]


def inverse_cdf_oracle(scores, tau, rand):
    """The sampling rule written out in numpy float64: p = exp((s - max s) / tau), chosen = the first j with
    cumsum(p)_j > rand * sum(p). scores [B, k], rand [B] -> chosen [B], and each row's distance from its draw to
    the nearest CDF step (where float32 rounding in a backend may legitimately pick the neighbour)."""
    s = np.asarray(scores, dtype=np.float64)
    u = np.asarray(rand, dtype=np.float64)[:, None]
    p = np.exp((s - s.max(axis=1, keepdims=True)) / tau)
    c = np.cumsum(p, axis=1) / p.sum(axis=1, keepdims=True)
    return (c > u).argmax(axis=1), np.abs(c - u).min(axis=1)


def check_draws(chosen, scores64, tau, rand, seed):
    want, margin = inverse_cdf_oracle(scores64, tau, rand)
    clear = margin > 1e-5
    assert clear.mean() > 0.95, f"seed {seed}: too few rows away from a CDF step"
    got = chosen.cpu().numpy()
    bad = np.nonzero((got != want) & clear)[0]
    assert bad.size == 0, f"seed {seed}: rows {bad[:10].tolist()} chose {got[bad[:10]].tolist()}, " \
                          f"the float64 oracle {want[bad[:10]].tolist()}"


@pytest.mark.parametrize("name", BACKENDS)
def test_fixed_randoms_draw_the_oracle_index(name, device, fresh_seed):
    mod = backend_module(name, device)
    B, k, d = 257, 10, 64
    cand, bank_w, bank_b = torch.randn(B, k, d), torch.randn(4, d), torch.randn(4)
    slot = torch.randint(-1, 4, (B,))
    logprob, weight = -torch.rand(B, k) * 4, torch.rand(B)
    rand = torch.rand(B)
    C, W, b = cand.double().numpy(), bank_w.double().numpy(), bank_b.double().numpy()
    sl = slot.numpy()
    r = np.where(sl[:, None] >= 0, np.einsum("bkd,bd->bk", C, W[sl]) + b[sl][:, None], 0.0)
    s64 = logprob.double().numpy() + weight.double().numpy()[:, None] * r
    args = [t.to(device) for t in (cand, bank_w, bank_b, slot, logprob, weight)]
    chosen = mod.score_select(*args, reference.SAMPLE, 0.8, rand.to(device))[0]
    check_draws(chosen, s64, 0.8, rand.numpy(), fresh_seed)


@pytest.mark.parametrize("ratio", (0.0, 1.0))
@pytest.mark.parametrize("name", BACKENDS)
def test_gather_fixed_randoms_draw_the_oracle_index(name, ratio, device, fresh_seed):
    mod = backend_module(name, device)
    B, V, k, d = 257, 1000, 10, 64
    query, emb = torch.randn(B, d) / d ** 0.5, torch.randn(V, d)
    cand_ids, offset = torch.randint(0, V, (B, k)), torch.randn(B)
    logprob, weight = -torch.rand(B, k) * 4, torch.rand(B)
    rand = torch.rand(B)
    lp = logprob.double().numpy()
    r = (np.einsum("bkd,bd->bk", emb.double().numpy()[cand_ids.numpy()], query.double().numpy())
         + offset.double().numpy()[:, None] - ratio * lp)
    s64 = lp + weight.double().numpy()[:, None] * r
    args = [t.to(device) for t in (query, emb, cand_ids, offset, logprob, weight)]
    chosen = mod.gather_score_select(*args, ratio, reference.SAMPLE, 0.8, rand.to(device))[0]
    check_draws(chosen, s64, 0.8, rand.numpy(), fresh_seed)


@pytest.mark.parametrize("tau", (0.5, 1.5))
@pytest.mark.parametrize("name", BACKENDS)
def test_empirical_frequencies_follow_softmax(name, tau, device):
    mod = backend_module(name, device)
    k = 10
    cand, bank_w, bank_b, slot, logprob, weight, rand = repeated_row(N_DRAWS, k, 4, device, seed=7 + int(tau * 10))
    chosen, scores, _ = mod.score_select(cand, bank_w, bank_b, slot, logprob, weight, reference.SAMPLE, tau, rand)
    # Expected probabilities from an independent float64 computation of the scores.
    r = cand[0].double().cpu() @ bank_w[1].double().cpu() + bank_b[1].double().cpu()  # [k]
    s = logprob[0].double().cpu() + 0.5 * r
    expected = torch.softmax(s / tau, dim=0)
    counts = torch.bincount(chosen.cpu(), minlength=k).double()
    assert counts[2] == 0, "the -inf candidate was drawn"
    freq = counts / counts.sum()
    cos = float(freq @ expected / (freq.norm() * expected.norm()))
    assert cos > 0.999, f"cosine {cos:.5f}: freq {freq.tolist()} vs {expected.tolist()}"
    assert float((freq - expected).abs().max()) < 0.01  # ~5 sigma at 100k draws


@pytest.mark.parametrize("name", BACKENDS)
def test_all_but_one_zero_probability(name, device):
    mod = backend_module(name, device)
    n, k = 1000, 10
    cand, bank_w, bank_b, slot, logprob, weight, rand = repeated_row(n, k, 4, device, seed=3)
    logprob = torch.full_like(logprob, -math.inf)
    logprob[:, 6] = -1.0
    chosen = mod.score_select(cand, bank_w, bank_b, slot, logprob, weight, reference.SAMPLE, 1.0, rand)[0]
    assert bool((chosen == 6).all())
