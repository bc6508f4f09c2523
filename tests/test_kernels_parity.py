"""Every available kernel backend against the independent torch reference (float64 where useful).

Inputs are fresh random tensors in every test (seeded by `fresh_seed`, which prints the seed). Device: env RGD_TEST_DEVICE (default cpu). The fused
backends (cpp, triton, cuda) and the torch backend run the full shape grid except triton on CPU, which runs in
the interpreter and gets a subset (INTERP_GRID, INTERP_SCORE_GRID) that still covers every listed value of B, V, d and k.
"""
import itertools
import math
import os

import pytest
import torch

from seeding import fresh_seed  # noqa: F401  (autouse: a printed fresh seed per test)

from rgd_engine.kernels import dispatch, reference

BACKENDS = ("torch", "cpp", "triton", "cuda")
FUSED = ("cpp", "triton", "cuda")
B_S, V_S, D_S, K_S = (1, 3, 17), (111, 1000, 49152), (64, 576), (1, 4, 10, 64)
GRID = list(itertools.product(B_S, V_S, D_S, K_S))
# Interpreter subset: each value of each dimension appears at least once; the big vocabulary with small d.
INTERP_GRID = [(1, 49152, 64, 10), (3, 1000, 576, 64), (17, 111, 64, 1), (3, 111, 576, 4), (17, 1000, 64, 10)]
RTOL = 1e-5
INTERPRETED = os.environ.get("RGD_TEST_DEVICE", "cpu") == "cpu"  # triton runs in the interpreter


def backend_module(name, device):
    reason = dispatch.unavailable_reason(name, device.type)
    if reason is not None:
        pytest.skip(f"{name} on {device.type}: {reason}")
    return dispatch._load(name)


def lmhead_cases():
    for name in BACKENDS:
        for case in INTERP_GRID if name == "triton" and INTERPRETED else GRID:
            yield pytest.param(name, *case, id=f"{name}-B{case[0]}-V{case[1]}-d{case[2]}-k{case[3]}")


def _tol(scale):
    # fp32 accumulation over d terms: RTOL relative to the magnitude of the logits involved.
    return RTOL * max(1.0, float(scale))


def check_lmhead(hidden, weight, k, logprob, ids, lse):
    """Compare a backend's outputs with the float64 reference; near-ties may swap ids, nothing else may."""
    B = hidden.shape[0]
    logits = hidden.double().cpu() @ weight.double().cpu().t()  # [B, V]
    lse64 = torch.logsumexp(logits, dim=-1)  # [B]
    ref_vals = torch.sort(logits, dim=-1, descending=True, stable=True)
    logprob, ids, lse = logprob.cpu(), ids.cpu(), lse.cpu()
    assert logprob.dtype == torch.float32 and ids.dtype == torch.int64 and lse.dtype == torch.float32
    assert logprob.shape == (B, k) and ids.shape == (B, k) and lse.shape == (B,)
    tol = _tol(logits.abs().max())
    torch.testing.assert_close(lse.double(), lse64, rtol=RTOL, atol=tol)
    top = ref_vals.values[:, :k] - lse64[:, None]  # [B, k]
    torch.testing.assert_close(logprob.double(), top, rtol=RTOL, atol=2 * tol)
    assert bool((logprob[:, 1:] <= logprob[:, :-1]).all()), "logprob must be sorted descending"
    assert bool(((ids >= 0) & (ids < weight.shape[0])).all())
    for b in range(B):
        assert len(set(ids[b].tolist())) == k, f"row {b}: duplicate ids {ids[b].tolist()}"
    # The returned ids carry the logits the backend claims.
    torch.testing.assert_close(logprob.double(), logits.gather(1, ids) - lse64[:, None], rtol=RTOL, atol=2 * tol)
    # Where the reference ranking has clear gaps (no near-tie within 4 tol), ids must match exactly.
    vals = ref_vals.values[:, : k + 1]
    gap_prev = torch.cat([torch.full((B, 1), math.inf, dtype=vals.dtype), vals[:, :-1] - vals[:, 1:]], dim=1)
    clear = (gap_prev[:, :k] > 4 * tol) & (gap_prev[:, 1: k + 1] > 4 * tol)
    ref_ids = ref_vals.indices[:, :k]
    assert torch.equal(ids[clear], ref_ids[clear]), "ids differ from the reference away from near-ties"


@pytest.mark.parametrize("name,B,V,d,k", list(lmhead_cases()))
def test_lmhead_topk_random(name, B, V, d, k, device):
    mod = backend_module(name, device)
    hidden = torch.randn(B, d, device=device)
    weight = torch.randn(V, d, device=device) / math.sqrt(d) * 4  # logits spread over a few units
    check_lmhead(hidden, weight, k, *mod.lmhead_topk(hidden, weight, k))


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("B", [1, 3])  # one row takes the C++ kernel's one-row (small_linear) tiles
def test_lmhead_topk_ties_lowest_id_first(name, B, device):
    mod = backend_module(name, device)
    # Small integers: every logit is exact in fp32, so duplicates are exact ties in every backend.
    V, d, k = 1000, 64, 64
    hidden = torch.randint(-2, 3, (B, d), device=device).float()
    weight = torch.randint(-1, 2, (V, d), device=device).float()
    weight[500:600] = weight[7]  # many duplicates of one row, some of which rank high
    logprob, ids, lse = mod.lmhead_topk(hidden, weight, k)
    ref_lp, ref_ids, ref_lse = reference.lmhead_topk_ref(hidden.cpu(), weight.cpu(), k)
    assert torch.equal(ids.cpu(), ref_ids), "ties must be broken by the lowest token id"
    torch.testing.assert_close(logprob.cpu(), ref_lp, rtol=RTOL, atol=1e-5)
    torch.testing.assert_close(lse.cpu(), ref_lse, rtol=RTOL, atol=1e-5)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("B", [1, 3])
def test_lmhead_topk_neg_inf_logits(name, B, device):
    mod = backend_module(name, device)
    V, d, k = 111, 64, 10
    hidden = torch.randn(B, d, device=device)
    hidden[:, 0] = hidden[:, 0].abs() + 0.5  # > 0, so a -inf weight entry gives a -inf logit
    weight = torch.randn(V, d, device=device)
    finite = torch.tensor([5, 40, 90], device=device)
    weight[:, 0] = -math.inf
    weight[finite, 0] = 1.0
    logprob, ids, lse = mod.lmhead_topk(hidden, weight, k)
    ref_lp, ref_ids, ref_lse = reference.lmhead_topk_ref(hidden.cpu().double(), weight.cpu().double(), k)
    # After the 3 finite logits come -inf ones, lowest ids first.
    assert torch.equal(ids.cpu(), ref_ids)
    assert ref_ids[0, 3:].tolist() == [0, 1, 2, 3, 4, 6, 7]
    torch.testing.assert_close(logprob.cpu(), ref_lp, rtol=RTOL, atol=1e-4)
    torch.testing.assert_close(lse.cpu(), ref_lse, rtol=RTOL, atol=1e-4)


@pytest.mark.parametrize("name", FUSED)
def test_lmhead_topk_overwrites_poisoned_outputs(name, device):
    mod = backend_module(name, device)
    B, V, d, k = 17, 1000, 64, 10
    hidden, weight = torch.randn(B, d, device=device), torch.randn(V, d, device=device)
    out = (torch.full((B, k), math.nan, device=device), torch.full((B, k), -777, dtype=torch.int64, device=device),
           torch.full((B,), math.nan, device=device))
    res = mod.lmhead_topk(hidden, weight, k, out=out)
    assert all(r is o for r, o in zip(res, out)), "out= buffers must be the returned tensors"
    check_lmhead(hidden, weight, k, *out)


# ---- score_select ------------------------------------------------------------------------------------------------

SCORE_GRID = list(itertools.product(B_S, (1, 4, 10, 64), D_S))
INTERP_SCORE_GRID = [(1, 64, 64), (3, 10, 576), (17, 4, 64), (17, 1, 576)]


def score_inputs(B, k, d, device, U=5):
    g = torch.default_generator  # seeded per test by fresh_seed (printed on failure)
    cand = torch.randn(B, k, d, generator=g)
    bank_w = torch.randn(U, d, generator=g) / math.sqrt(d)
    bank_b = torch.randn(U, generator=g)
    slot = torch.randint(-1, U, (B,), generator=g)
    slot[0] = -1  # always cover "no head"
    if B > 1:
        slot[1] = U - 1
    logprob = -torch.rand(B, k, generator=g) * 8
    if k > 2:
        logprob[:, 2] = -math.inf  # a zero-probability candidate
    weight = torch.rand(B, generator=g) * 2
    rand = torch.rand(B, generator=g)
    return [t.to(device) for t in (cand, bank_w, bank_b, slot, logprob, weight, rand)]


def check_score_select(inputs, mode, tau, chosen, scores, rewards):
    cand, bank_w, bank_b, slot, logprob, weight, rand = [t.cpu() for t in inputs]
    B, k, _ = cand.shape
    r64 = reference.gather_rewards_ref(cand.double(), bank_w.double(), bank_b.double(), slot).double()
    s64 = logprob.double() + weight.double()[:, None] * r64
    chosen, scores, rewards = chosen.cpu(), scores.cpu(), rewards.cpu()
    assert chosen.dtype == torch.int64 and chosen.shape == (B,)
    assert scores.dtype == torch.float32 and rewards.dtype == torch.float32
    tol = _tol(r64.abs().max())
    torch.testing.assert_close(rewards.double(), r64, rtol=RTOL, atol=tol)
    assert bool((rewards[slot < 0] == 0).all()), "rows without a head must have zero reward"
    torch.testing.assert_close(scores.double(), s64, rtol=RTOL, atol=2 * tol)
    if mode == reference.GREEDY:
        top2 = torch.topk(s64, min(2, k), dim=-1).values
        clear = (top2[:, 0] - top2[:, -1] > 4 * tol) | torch.tensor(k == 1)
        assert torch.equal(chosen[clear], s64.argmax(-1)[clear])
        return
    # Sample: the reference inverse CDF on the fp32 reference scores, except rows whose draw lies within
    # rounding distance of a CDF step (there fp32 summation order legitimately decides).
    ref_scores = reference.score_select_ref(cand, bank_w, bank_b, slot, logprob, weight, mode, tau, rand)[1]
    ref = reference.inverse_cdf_choice(ref_scores, tau, rand)
    p = torch.softmax(s64 / tau, dim=-1)
    margin = (p.cumsum(-1) - rand.double()[:, None]).abs().min(-1).values
    clear = margin > 1e-4
    assert torch.equal(chosen[clear], ref[clear])
    assert bool((logprob.gather(1, chosen[:, None]) > -math.inf).all()), "a -inf candidate was drawn"


def score_cases():
    for name in BACKENDS:
        for case in INTERP_SCORE_GRID if name == "triton" and INTERPRETED else SCORE_GRID:
            for mode in (reference.GREEDY, reference.SAMPLE):
                yield pytest.param(name, *case, mode, id=f"{name}-B{case[0]}-k{case[1]}-d{case[2]}-{mode}")


@pytest.mark.parametrize("name,B,k,d,mode", list(score_cases()))
def test_score_select_random(name, B, k, d, mode, device):
    mod = backend_module(name, device)
    inputs = score_inputs(B, k, d, device)
    cand, bank_w, bank_b, slot, logprob, weight, rand = inputs
    tau = 0.7
    out = mod.score_select(cand, bank_w, bank_b, slot, logprob, weight, mode, tau, rand)
    check_score_select(inputs, mode, tau, *out)


@pytest.mark.parametrize("name", BACKENDS)
def test_score_select_greedy_ties_lowest_index(name, device):
    mod = backend_module(name, device)
    B, k, d = 17, 10, 64
    cand, bank_w, bank_b, slot, _, weight, rand = score_inputs(B, k, d, device)
    logprob = torch.randint(-3, 0, (B, k), device=device).float()  # many exact ties
    weight = torch.zeros(B, device=device)
    chosen, scores, _ = mod.score_select(cand, bank_w, bank_b, slot, logprob, weight, reference.GREEDY, 1.0, None)
    assert torch.equal(scores.cpu(), logprob.cpu())
    first_max = (logprob == logprob.max(-1, keepdim=True).values).int().argmax(-1)
    assert torch.equal(chosen.cpu(), first_max.cpu())


@pytest.mark.parametrize("name", BACKENDS)
def test_score_select_all_slots_empty(name, device):
    mod = backend_module(name, device)
    inputs = score_inputs(3, 4, 64, device)
    inputs[3] = torch.full((3,), -1, dtype=torch.int64, device=device)
    cand, bank_w, bank_b, slot, logprob, weight, rand = inputs
    out = mod.score_select(cand, bank_w, bank_b, slot, logprob, weight, reference.GREEDY, 1.0, None)
    assert bool((out[2] == 0).all())
    check_score_select(inputs, reference.GREEDY, 1.0, *out)


@pytest.mark.parametrize("name", FUSED)
@pytest.mark.parametrize("mode", (reference.GREEDY, reference.SAMPLE))
def test_score_select_overwrites_poisoned_outputs(name, mode, device):
    mod = backend_module(name, device)
    B, k, d = 17, 10, 64
    inputs = score_inputs(B, k, d, device)
    out = (torch.full((B,), -777, dtype=torch.int64, device=device), torch.full((B, k), math.nan, device=device),
           torch.full((B, k), math.nan, device=device))
    res = mod.score_select(*inputs[:6], mode, 0.5, inputs[6], out=out)
    assert all(r is o for r, o in zip(res, out)), "out= buffers must be the returned tensors"
    check_score_select(inputs, mode, 0.5, *out)


@pytest.mark.parametrize("name", BACKENDS)
def test_through_dispatch_matches_reference(name, device):
    backend_module(name, device)
    hidden, weight = torch.randn(3, 64, device=device), torch.randn(1000, 64, device=device)
    check_lmhead(hidden, weight, 4, *dispatch.lmhead_topk(hidden, weight, 4, backend=name))
    inputs = score_inputs(3, 4, 64, device)
    out = dispatch.score_select(*inputs[:6], reference.SAMPLE, 0.9, inputs[6], backend=name)
    check_score_select(inputs, reference.SAMPLE, 0.9, *out)


@pytest.mark.parametrize("name", BACKENDS)
def test_bfloat16_matrices_are_widened_exactly(name, device):
    if name == "triton" and INTERPRETED:
        pytest.skip("the triton interpreter backend is float32 only")
    mod = backend_module(name, device)
    hidden = torch.randn(3, 576, device=device)
    weight = torch.randn(1000, 576, device=device).bfloat16()
    check_lmhead(hidden, weight.float(), 10, *mod.lmhead_topk(hidden, weight, 10))
    cand, bank_w, bank_b, slot, logprob, wgt, rand = score_inputs(3, 10, 576, device)
    out = mod.score_select(cand.bfloat16(), bank_w.bfloat16(), bank_b, slot, logprob, wgt, reference.GREEDY, 1.0, None)
    check_score_select([cand.bfloat16().float(), bank_w.bfloat16().float(), bank_b, slot, logprob, wgt, rand],
                       reference.GREEDY, 1.0, *out)


BF16_GRID = [(B, V, d) for B in (1, 2, 3, 4, 5, 17) for V, d in ((1000, 576), (111, 33), (300, 100))] + \
    [(16, 49152, 576)]


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("B,V,d", BF16_GRID, ids=[f"B{b}-V{v}-d{d}" for b, v, d in BF16_GRID])
def test_lmhead_topk_bfloat16_hidden_and_weight(name, B, V, d, device):
    """bf16 x bf16 (the bf16 engine's decode step; AVX512-BF16 dot products in the C++ backend where the CPU has
    them): every B of the 4-row register tile and its leftovers, d not a multiple of the 32-lane loads."""
    if name == "triton" and INTERPRETED:
        pytest.skip("the triton interpreter backend is float32 only")
    mod = backend_module(name, device)
    hidden = torch.randn(B, d, device=device).bfloat16()
    weight = (torch.randn(V, d, device=device) / math.sqrt(d) * 4).bfloat16()
    check_lmhead(hidden.float(), weight.float(), 10, *mod.lmhead_topk(hidden, weight, 10))


@pytest.mark.parametrize("name", BACKENDS)
def test_lmhead_topk_bfloat16_ties_lowest_id_first(name, device):
    if name == "triton" and INTERPRETED:
        pytest.skip("the triton interpreter backend is float32 only")
    mod = backend_module(name, device)
    B, V, d, k = 5, 1000, 70, 64  # small integers are exact in bf16 and their dot products exact in fp32
    hidden = torch.randint(-2, 3, (B, d), device=device).bfloat16()
    weight = torch.randint(-1, 2, (V, d), device=device).bfloat16()
    weight[500:600] = weight[7]
    logprob, ids, lse = mod.lmhead_topk(hidden, weight, k)
    ref_lp, ref_ids, ref_lse = reference.lmhead_topk_ref(hidden.cpu().float(), weight.cpu().float(), k)
    assert torch.equal(ids.cpu(), ref_ids), "ties must be broken by the lowest token id"
    torch.testing.assert_close(logprob.cpu(), ref_lp, rtol=RTOL, atol=1e-5)


def test_cpp_bfloat16_path_matches_the_cpu_flags():
    """The AVX512-BF16 path runs exactly where the CPU advertises the instructions (Linux: /proc/cpuinfo)."""
    _C = pytest.importorskip("rgd_engine._C")
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    want = {"avx512f", "avx512bw", "avx512_bf16"} <= flags
    assert _C.lmhead_topk_bf16_is_native() == want


# ---- gather_score_select -----------------------------------------------------------------------------------------

RATIOS = (0.0, 1.0)  # the `token` rule (0) and the `logratio` rule (1)


def gather_inputs(B, V, d, k, device):
    g = torch.default_generator  # seeded per test by fresh_seed (printed on failure)
    query = torch.randn(B, d, generator=g) / math.sqrt(d)  # the scale goes on the small side of the dot
    emb = torch.randn(V, d, generator=g)
    cand_ids = torch.randint(0, V, (B, k), generator=g)
    if k > 1:
        cand_ids[:, -1] = cand_ids[:, 0]  # a duplicate candidate in every row
    offset = torch.randn(B, generator=g) * 3
    logprob = -torch.rand(B, k, generator=g) * 8
    weight = torch.rand(B, generator=g) * 2
    weight[0] = 0.0  # always cover a weight-0 row
    rand = torch.rand(B, generator=g)
    return [t.to(device) for t in (query, emb, cand_ids, offset, logprob, weight, rand)]


def check_gather_score_select(inputs, ratio, mode, tau, chosen, scores, rewards):
    query, emb, cand_ids, offset, logprob, weight, rand = [t.cpu() for t in inputs]
    B, k = cand_ids.shape
    e64 = emb[cand_ids].double()  # [B, k, d]: gather first, never widen the whole table
    r64 = torch.einsum("bkd,bd->bk", e64, query.double()) + offset.double()[:, None] - ratio * logprob.double()
    s64 = logprob.double() + weight.double()[:, None] * r64
    chosen, scores, rewards = chosen.cpu(), scores.cpu(), rewards.cpu()
    assert chosen.dtype == torch.int64 and chosen.shape == (B,)
    assert scores.dtype == torch.float32 and scores.shape == (B, k)
    assert rewards.dtype == torch.float32 and rewards.shape == (B, k)
    assert bool(((chosen >= 0) & (chosen < k)).all())
    tol = _tol(r64.abs().max())
    torch.testing.assert_close(rewards.double(), r64, rtol=RTOL, atol=tol)
    torch.testing.assert_close(scores.double(), s64, rtol=RTOL, atol=2 * tol)
    if mode == reference.GREEDY:
        top2 = torch.topk(s64, min(2, k), dim=-1).values
        clear = (top2[:, 0] - top2[:, -1] > 4 * tol) | torch.tensor(k == 1)
        assert torch.equal(chosen[clear], s64.argmax(-1)[clear])
        return
    # Sample: as check_score_select, the reference inverse CDF away from rounding distance of a CDF step.
    ref_scores = reference.gather_score_select_ref(query, emb, cand_ids, offset, logprob, weight, ratio)[1]
    ref = reference.inverse_cdf_choice(ref_scores, tau, rand)
    margin = (torch.softmax(s64 / tau, dim=-1).cumsum(-1) - rand.double()[:, None]).abs().min(-1).values
    clear = margin > 1e-4
    assert torch.equal(chosen[clear], ref[clear])


def gather_cases():
    for name in BACKENDS:
        for case in INTERP_GRID if name == "triton" and INTERPRETED else GRID:
            yield pytest.param(name, *case, id=f"{name}-B{case[0]}-V{case[1]}-d{case[2]}-k{case[3]}")


@pytest.mark.parametrize("name,B,V,d,k", list(gather_cases()))
def test_gather_score_select_random(name, B, V, d, k, device):
    mod = backend_module(name, device)
    inputs = gather_inputs(B, V, d, k, device)
    query, emb, cand_ids, offset, logprob, weight, rand = inputs
    tau = 0.7
    # One embedding table per case (the large one costs more than a call): both rules, both modes.
    for ratio in RATIOS:
        for mode in (reference.GREEDY, reference.SAMPLE):
            out = mod.gather_score_select(query, emb, cand_ids, offset, logprob, weight, ratio, mode, tau, rand)
            check_gather_score_select(inputs, ratio, mode, tau, *out)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("ratio", RATIOS)
def test_gather_score_select_exact_ties_lowest_index(name, ratio, device):
    mod = backend_module(name, device)
    # Small integers: every reward and score is exact in fp32, so equal scores are exact ties in every backend.
    B, V, d, k = 17, 111, 64, 10
    query = torch.randint(-2, 3, (B, d)).float()
    emb = torch.randint(-1, 2, (V, d)).float()
    cand_ids = torch.randint(0, 8, (B, k))  # 8 ids for 10 slots: duplicates in every row
    offset = torch.randint(-3, 4, (B,)).float()
    logprob = torch.randint(-3, 0, (B, k)).float()
    weight = torch.randint(0, 3, (B,)).float()
    weight[:5] = 0.0  # weight-0 rows: the scores are the logprobs, full of ties
    args = [t.to(device) for t in (query, emb, cand_ids, offset, logprob, weight)]
    ref = reference.gather_score_select_ref(query, emb, cand_ids, offset, logprob, weight, ratio)
    chosen, scores, rewards = mod.gather_score_select(*args, ratio, reference.GREEDY, 1.0, None)
    assert torch.equal(scores.cpu(), ref[1]) and torch.equal(rewards.cpu(), ref[2])
    assert torch.equal(scores[:5].cpu(), logprob[:5])
    first_max = (ref[1] == ref[1].max(-1, keepdim=True).values).int().argmax(-1)
    assert torch.equal(ref[0], first_max)
    assert torch.equal(chosen.cpu(), first_max), "ties must be broken by the lowest index"


def neg_inf_gather_inputs(device, B=17, V=111, d=64, k=10):
    """gather_inputs with -inf logprobs scattered over random rows (first and last columns included), one row
    entirely -inf, one row with a single finite candidate (last column), several weight-0 rows, and fixed draws
    that cover both ends of [0, 1)."""
    query, emb, cand_ids, offset, logprob, weight, _ = [t.cpu() for t in gather_inputs(B, V, d, k, device)]
    g = torch.default_generator
    hole = torch.rand(B, k, generator=g) < 0.4
    hole &= (torch.rand(B, 1, generator=g) < 0.7)  # some rows keep every candidate
    hole[5, 0] = hole[6, -1] = True  # the first and the last column
    hole[3] = True  # a row entirely outside the support
    hole[4] = True
    hole[4, -1] = False  # a single finite candidate, in the last column
    logprob[hole] = -math.inf
    weight[[1, 3, 4, 7]] = 0.0  # weight 0 on hole rows too (weight[0] is 0 already)
    rand = torch.linspace(0.0, 1.0, B)
    rand[-1] = 1.0 - 2**-24  # the largest float32 below 1
    rand[1] = 0.0
    return [t.to(device) for t in (query, emb, cand_ids, offset, logprob, weight, rand)]


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("mode", (reference.GREEDY, reference.SAMPLE))
def test_gather_score_select_neg_inf_logprob(name, ratio, mode, device):
    """Rule: ratio 0 drops the ratio term; a -inf logprob scores -inf (never nan) and is never chosen, unless the
    whole row is -inf, which chooses index 0."""
    mod = backend_module(name, device)
    inputs = neg_inf_gather_inputs(device)
    query, emb, cand_ids, offset, logprob, weight, rand = [t.cpu() for t in inputs]
    tau = 0.7
    ref = reference.gather_score_select_ref(query, emb, cand_ids, offset, logprob, weight, ratio, mode, tau, rand)
    chosen, scores, rewards = [t.cpu() for t in mod.gather_score_select(*inputs[:6], ratio, mode, tau, inputs[6])]
    hole = logprob == -math.inf
    all_hole = hole.all(-1)
    assert bool(hole.any()) and bool(all_hole.any()) and bool((~all_hole).any())
    for got in (ref[1], ref[2], scores, rewards):
        assert not bool(got.isnan().any()), "nan in scores or rewards"
    # The rule, in the reference and the backend alike.
    for s, r in ((ref[1], ref[2]), (scores, rewards)):
        assert torch.equal(s == -math.inf, hole) and not bool(s.isposinf().any())
        assert torch.equal(r.isposinf(), hole if ratio == 1.0 else torch.zeros_like(hole))
        assert not bool(r.isneginf().any())
    assert torch.equal(scores.isinf(), ref[1].isinf()) and torch.equal(rewards.isinf(), ref[2].isinf())
    # Finite entries as the reference (exact for the torch backend).
    tol = _tol(ref[2][~ref[2].isinf()].abs().max())
    torch.testing.assert_close(rewards, ref[2], rtol=RTOL, atol=tol)
    torch.testing.assert_close(scores, ref[1], rtol=RTOL, atol=2 * tol)
    # Selection: in range, never a -inf candidate of a row with a finite one, 0 for an all -inf row.
    assert chosen.dtype == torch.int64 and chosen.shape == ref[0].shape
    assert bool(((chosen >= 0) & (chosen < cand_ids.shape[1])).all())
    assert not bool(hole.gather(1, chosen[:, None])[~all_hole].any()), "a -inf candidate was chosen"
    assert bool((chosen[all_hole] == 0).all()) and bool((ref[0][all_hole] == 0).all())
    assert not bool(hole.gather(1, ref[0][:, None])[~all_hole].any())
    assert int(chosen[4]) == int(ref[0][4]) == cand_ids.shape[1] - 1, "the single finite candidate"
    # Otherwise the reference's choice, away from near-ties (greedy) and CDF steps (sample).
    s64 = ref[1].double()
    if mode == reference.GREEDY:
        top2 = torch.topk(s64, 2, dim=-1).values
        clear = ~(top2[:, 1].isfinite() & (top2[:, 0] - top2[:, 1] <= 4 * tol))
    else:
        margin = (torch.softmax(s64 / tau, dim=-1).cumsum(-1) - rand.double()[:, None]).abs().min(-1).values
        clear = (margin > 1e-4) | all_hole
    assert torch.equal(chosen[clear], ref[0][clear])


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("mode", (reference.GREEDY, reference.SAMPLE))
def test_score_select_all_neg_inf_row_chooses_zero(name, mode, device):
    mod = backend_module(name, device)
    inputs = score_inputs(17, 10, 64, device)
    inputs[4][3] = -math.inf  # row 3 entirely outside the support (finite rewards: scores -inf, not nan)
    inputs[4][5, :-1] = -math.inf  # row 5: only the last candidate is finite
    chosen, scores, _ = mod.score_select(*inputs[:6], mode, 0.7, inputs[6])
    chosen, scores = chosen.cpu(), scores.cpu()
    assert not bool(scores.isnan().any())
    assert bool((scores[3] == -math.inf).all()) and int(chosen[3]) == 0 and int(chosen[5]) == 9
    assert bool(((chosen >= 0) & (chosen < 10)).all())


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("mode", (reference.GREEDY, reference.SAMPLE))
def test_neg_inf_logprob_with_pos_inf_reward_is_the_same_rule_in_both_ops(name, mode, device):
    """logprob -inf and reward +inf (w > 0) scores -inf, never nan, and is never chosen: score_select and
    gather_score_select alike (gather gets its +inf reward from the ratio term, score_select from its head)."""
    mod = backend_module(name, device)
    B, k, d = 3, 4, 64
    cand, bank_w, bank_b, _, logprob, weight, rand = [t.cpu() for t in score_inputs(B, k, d, device)]
    slot = torch.zeros(B, dtype=torch.int64)
    bank_w[0] = bank_w[0].abs() + 0.1  # positive head: an inf feature gives a +inf reward
    cand[:, 1] = 0.0
    cand[:, 1, 3] = math.inf  # candidate 1 of every row: reward +inf ...
    logprob = -torch.rand(B, k) - 0.1
    logprob[:, 1] = -math.inf  # ... and outside the policy's support
    weight = torch.rand(B) + 0.5
    inputs = [t.to(device) for t in (cand, bank_w, bank_b, slot, logprob, weight, rand)]
    chosen, scores, rewards = [t.cpu() for t in mod.score_select(*inputs[:6], mode, 0.7, inputs[6])]
    assert bool(rewards[:, 1].isposinf().all()), rewards
    assert bool((scores[:, 1] == -math.inf).all()) and not bool(scores.isnan().any()), scores
    assert bool((chosen != 1).all()), chosen
    query, emb, cand_ids, offset, _, _, _ = gather_inputs(B, 111, d, k, device)
    g_chosen, g_scores, g_rewards = [t.cpu() for t in mod.gather_score_select(
        query, emb, cand_ids, offset, inputs[4], inputs[5], 1.0, mode, 0.7, inputs[6])]
    assert bool(g_rewards[:, 1].isposinf().all()), g_rewards
    assert bool((g_scores[:, 1] == -math.inf).all()) and not bool(g_scores.isnan().any()), g_scores
    assert bool((g_chosen != 1).all()), g_chosen


@pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning")  # the interpreter's numpy max
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("mode", (reference.GREEDY, reference.SAMPLE))
def test_select_index_in_range_for_nan_scores(name, mode, device):
    # nan scores have no defined choice, but every backend must still return an index in [0, k).
    mod = backend_module(name, device)
    inputs = gather_inputs(3, 111, 64, 4, device)
    inputs[4][0] = math.nan
    inputs[4][1, 2] = math.nan
    chosen = mod.gather_score_select(*inputs[:6], 1.0, mode, 0.7, inputs[6])[0].cpu()
    assert bool(((chosen >= 0) & (chosen < 4)).all())
    inputs = score_inputs(3, 4, 64, device)
    inputs[4][0] = math.nan
    chosen = mod.score_select(*inputs[:6], mode, 0.7, inputs[6])[0].cpu()
    assert bool(((chosen >= 0) & (chosen < 4)).all())


@pytest.mark.parametrize("name", FUSED)
@pytest.mark.parametrize("mode", (reference.GREEDY, reference.SAMPLE))
def test_gather_score_select_overwrites_poisoned_outputs(name, mode, device):
    mod = backend_module(name, device)
    B, V, d, k = 17, 1000, 64, 10
    inputs = gather_inputs(B, V, d, k, device)
    out = (torch.full((B,), -777, dtype=torch.int64, device=device), torch.full((B, k), math.nan, device=device),
           torch.full((B, k), math.nan, device=device))
    res = mod.gather_score_select(*inputs[:6], 1.0, mode, 0.5, inputs[6], out=out)
    assert all(r is o for r, o in zip(res, out)), "out= buffers must be the returned tensors"
    check_gather_score_select(inputs, 1.0, mode, 0.5, *out)


@pytest.mark.parametrize("name", BACKENDS)
def test_gather_score_select_through_dispatch(name, device):
    backend_module(name, device)
    inputs = gather_inputs(3, 1000, 64, 4, device)
    out = dispatch.gather_score_select(*inputs[:6], 1.0, reference.SAMPLE, 0.9, inputs[6], backend=name)
    check_gather_score_select(inputs, 1.0, reference.SAMPLE, 0.9, *out)


@pytest.mark.parametrize("name", BACKENDS)
def test_gather_score_select_bfloat16_emb_is_widened_exactly(name, device):
    if name == "triton" and INTERPRETED:
        pytest.skip("the triton interpreter backend is float32 only")
    mod = backend_module(name, device)
    query, emb, cand_ids, offset, logprob, weight, rand = gather_inputs(3, 1000, 576, 10, device)
    emb = emb.bfloat16()
    out = mod.gather_score_select(query, emb, cand_ids, offset, logprob, weight, 1.0, reference.GREEDY, 1.0, None)
    check_gather_score_select([query, emb.float(), cand_ids, offset, logprob, weight, rand], 1.0, reference.GREEDY,
                              1.0, *out)
