"""Launch settings of the Triton kernels stay bounded for every vocabulary and k the engine meets, and a merge of
several rounds gives the exact top-k (run in the interpreter on a small vocabulary with tiny blocks)."""
import math

import pytest
import torch

from test_kernels_parity import check_lmhead

from rgd_engine.kernels import dispatch
from rgd_engine.kernels.triton.settings import MAX_MERGE, MAX_TILE, cdiv, lmhead_plan, next_pow2, select_tile

VOCABS = (1, 2, 111, 320, 1000, 32000, 49152, 128256, 151936, 262144)
KS = (1, 2, 4, 10, 50, 64, 100, 128, 255, 256)


@pytest.mark.parametrize("device_type", ("cuda", "cpu"))
def test_lmhead_plan_is_bounded_and_consistent(device_type):
    for V in VOCABS:
        for k in KS:
            if k > V:
                continue
            plan = lmhead_plan(V, k, device_type)
            where = f"V={V} k={k} {device_type}: {plan}"
            assert plan.nb == cdiv(V, plan.block_v) and plan.kc == min(k, plan.block_v), where
            assert plan.nb * plan.kc >= k, where  # stage 1 keeps enough candidates
            assert plan.block_v <= 4096 and plan.num_warps in (4, 8), where
            n, width = plan.nb, plan.kc
            for j, rnd in enumerate(plan.rounds):
                assert (rnd.n_in, rnd.k_in) == (n, width), where  # rounds chain
                assert rnd.block_c <= MAX_MERGE and rnd.block_g <= MAX_MERGE, where
                assert rnd.group * rnd.k_in <= rnd.block_c <= 2 * rnd.group * rnd.k_in, where
                assert rnd.n_out == cdiv(rnd.n_in, rnd.group), where
                assert rnd.k_out <= k and rnd.n_out * rnd.k_out >= k, where
                assert rnd.final == (j == len(plan.rounds) - 1), where
                n, width = rnd.n_out, rnd.k_out
            assert (n, width) == (1, k), where
            assert len(plan.rounds) <= 3, where


def test_the_old_unbounded_merge_is_split():
    # One program used to hold next_pow2(NB * KC) entries: V = 152k, k = 64 on GPU -> 65,536.
    plan = lmhead_plan(151936, 64, "cuda")
    assert next_pow2(plan.nb * plan.kc) == 65536
    assert len(plan.rounds) == 2 and max(r.block_c for r in plan.rounds) <= MAX_MERGE


def test_k_above_the_supported_limit_is_a_clear_error():
    with pytest.raises(ValueError, match="largest supported k=2048"):
        lmhead_plan(262144, 4096, "cuda")
    with pytest.raises(ValueError, match=r"k=0 must be in \[1, V=10\]"):
        lmhead_plan(10, 0, "cuda")


def test_select_tiles_are_bounded():
    for k in KS + (512,):
        for D in (1, 48, 64, 576, 4096):
            for B in (1, 3, 64):
                t = select_tile(B, k, D, "cuda")
                assert t.block_k >= max(2, k) and t.block_k == next_pow2(t.block_k)
                assert t.block_r * t.block_k * t.block_d <= MAX_TILE, (B, k, D, t)
                assert 1 <= t.block_r <= 4 and t.block_d >= min(16, next_pow2(D))
                assert select_tile(B, k, D, "cuda", rows=False).block_r == 1


@pytest.mark.parametrize("V,k,block_v,max_merge", [(1000, 40, 64, 128), (777, 3, 16, 8),
                                                    (300, 299, 32, 1024)])
def test_multi_round_merge_matches_the_reference(V, k, block_v, max_merge):
    if dispatch.unavailable_reason("triton", "cpu") is not None:
        pytest.skip(dispatch.unavailable_reason("triton", "cpu"))
    from rgd_engine.kernels.triton.launch import lmhead_topk

    seed = torch.seed() % 2**31
    g = torch.Generator().manual_seed(seed)
    plan = lmhead_plan(V, k, "cpu", block_v=block_v, max_merge=max_merge)
    assert len(plan.rounds) >= 2 or V == 300, plan  # 300: one round of 10 lists, k near V
    hidden = torch.randn(3, 32, generator=g)
    weight = torch.randn(V, 32, generator=g) / math.sqrt(32) * 4
    weight[5:9] = weight[100]  # exact ties across V-blocks: lowest id first
    logprob, ids, lse = lmhead_topk(hidden, weight, k, plan=plan)
    try:
        check_lmhead(hidden, weight, k, logprob, ids, lse)
        for row in ids.tolist():  # the tied rows, where taken, in ascending id order
            tied = [t for t in row if t in (5, 6, 7, 8, 100)]
            assert tied == sorted(tied), row
    except AssertionError as e:
        raise AssertionError(f"seed {seed}, {plan}: {e}") from e
