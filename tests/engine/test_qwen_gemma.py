"""Tiny random Qwen2 (fast forward) and Gemma 3 (HF forward, sliding-window layers) against independent
references: HF generate, whole-sequence HF forwards without a cache (HF builds its own sliding-window masks
there), and brute-force policy scores. The Gemma 3 window (tiny_models.GEMMA3_WINDOW) is shorter than every
prompt + continuation, so a tree mask that ignored it would fail these tests."""
import math
import random

import pytest
import torch

from rgd_engine import Engine, GenerationConfig, HeadBank
from rgd_engine.models.sliding_window import band_mask
from rgd_engine.policy_accuracy import candidate_states, sequence_scores
from tiny_models import GEMMA3_WINDOW, save_tiny

PROMPTS = ["The quick brown fox jumps", "Reward guided decoding steers a language model with a reward", "News:"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, tiny_tokenizer):
    """Policies and a smaller reward backbone per family, all on the same tokenizer."""
    root = tmp_path_factory.mktemp("qwen_gemma")
    return {
        "qwen2": save_tiny(root / "qwen2", "qwen2", seed=21, tokenizer=tiny_tokenizer),
        "qwen2-rm": save_tiny(root / "qwen2-rm", "qwen2", seed=22, hidden=48, tokenizer=tiny_tokenizer),
        "gemma3": save_tiny(root / "gemma3", "gemma3", seed=23, tokenizer=tiny_tokenizer),
        "gemma3-rm": save_tiny(root / "gemma3-rm", "gemma3", seed=24, hidden=40, tokenizer=tiny_tokenizer),
    }


def _seed() -> int:
    return random.randrange(2 ** 31)


def _bank(d: int, users, seed: int) -> HeadBank:
    g = torch.Generator().manual_seed(seed)
    bank = HeadBank(d, capacity=len(users))
    for u in users:
        bank.add(u, torch.randn(d, generator=g) * 3, float(torch.randn(1, generator=g)))
    return bank


@torch.no_grad()
def _full_hidden(lm, ids: list[int]) -> torch.Tensor:
    """Final-norm hidden state at the last token of one whole sequence: HF forward, no cache, HF's own masks."""
    return lm.base(input_ids=torch.tensor([ids]), use_cache=False).last_hidden_state[0, -1]


def test_forward_kinds(dirs, load):
    assert load(dirs["qwen2"]).forward_kind == "fast"
    gemma = load(dirs["gemma3"])
    assert gemma.forward_kind == "hf" and gemma.window == GEMMA3_WINDOW


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_greedy_equals_hf_generate(dirs, load, arch):
    lm = load(dirs[arch])
    max_new = 20
    ours = Engine(lm).generate(PROMPTS, config=GenerationConfig(max_new_tokens=max_new))
    tok = lm.tokenizer
    tok.padding_side = "left"
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    assert enc["input_ids"].shape[1] > GEMMA3_WINDOW
    out = lm.hf_model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id)
    for o, row in zip(ours, out[:, enc["input_ids"].shape[1]:].tolist()):
        assert len(o.token_ids) > 0
        assert o.token_ids == row[:len(o.token_ids)]
        assert all(t == tok.pad_token_id for t in row[len(o.token_ids):])


@pytest.mark.parametrize("arch,separate", [("qwen2", False), ("gemma3", False), ("qwen2", True), ("gemma3", True)])
def test_tree_mask_rewards_equal_full_recomputation(dirs, load, arch, separate):
    policy = load(dirs[arch])
    reward = load(dirs[f"{arch}-rm"]) if separate else None
    engine = Engine(policy, reward)
    backbone = reward or policy
    assert backbone.hidden_size != policy.hidden_size or not separate  # really a different-size backbone
    seed = _seed()
    bank = _bank(engine.hidden_size, ["a", "b"], seed)
    users = ["a", "b", "a"]
    outs = engine.generate(PROMPTS, users=users, heads=bank, k=4, weight=0.7, max_new_tokens=8, return_scores=True)
    checked = 0
    for prompt, user, o in zip(PROMPTS, users, outs):
        ids = engine.encode(prompt)
        w, b = bank.head(user)
        for t, step in enumerate(o.steps):
            for j, v in enumerate(step["candidates"]):
                want = float(_full_hidden(backbone, ids + o.token_ids[:t] + [v]) @ w) + b
                assert step["reward"][j] == pytest.approx(want, abs=1e-4, rel=1e-4), f"seed {seed}, step {t}"
                checked += 1
    assert checked >= 3 * 4 * 4, f"seed {seed}"


@torch.no_grad()
def _brute_force_score(policy, backbone, x, y, w_head, b_head, weight, k) -> float:
    """S(y) (mean over steps, candidates = top-k of pi plus y_t) from whole-sequence forwards only."""
    terms = []
    for t in range(len(y)):
        prefix = x + y[:t]
        lp = torch.log_softmax(policy.hf_model(input_ids=torch.tensor([prefix]), use_cache=False).logits[0, -1].double(), -1)
        cands = set(torch.topk(lp, k).indices.tolist()) | {y[t]}
        scores = {v: float(lp[v]) + weight * (float(_full_hidden(backbone, prefix + [v]).double() @ w_head.double())
                                              + b_head) for v in cands}
        terms.append(scores[y[t]] - math.log(sum(math.exp(s) for s in scores.values())))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("arch,separate", [("qwen2", False), ("gemma3", False), ("gemma3", True)])
def test_policy_scores_equal_brute_force(dirs, load, arch, separate):
    policy = load(dirs[arch])
    reward = load(dirs[f"{arch}-rm"]) if separate else None
    engine = Engine(policy, reward)
    backbone = reward or policy
    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    W, b = torch.randn(1, backbone.hidden_size, generator=g) * 2, torch.randn(1, generator=g)
    x = engine.encode(PROMPTS[1])
    greedy = engine.generate([PROMPTS[1]], max_new_tokens=5)[0].token_ids
    y = greedy[:3] + engine.encode(" frog")[-1:] + greedy[3:]  # one unlikely token: gold in and out of top-k
    k = 3
    cs = candidate_states(policy, backbone, x, y, k)
    got = sequence_scores(cs, W, b, torch.tensor([0.0, 1.5]))  # [1, 2]
    for i, weight in enumerate((0.0, 1.5)):
        want = _brute_force_score(policy, backbone, x, y, W[0], float(b[0]), weight, k)
        assert float(got[0, i]) == pytest.approx(want, abs=1e-4, rel=1e-4), f"seed {seed}, w {weight}"


def test_window_changes_the_hidden_states(dirs, load):
    """The reference can fail: without the band, Gemma 3's tree states differ from the full recomputation."""
    lm = load(dirs["gemma3"])
    ids = lm.tokenizer(PROMPTS[1])["input_ids"]
    n = len(ids)
    pos = torch.arange(n)[None]
    causal = torch.full((n, n), torch.finfo(lm.dtype).min).triu(1)[None, None]  # [1, 1, n, n]
    want = lm.base(input_ids=torch.tensor([ids]), use_cache=False).last_hidden_state
    torch.testing.assert_close(lm.masked_forward(torch.tensor([ids]), pos, causal), want, atol=1e-5, rtol=1e-5)
    unbanded = lm.base(input_ids=torch.tensor([ids]), position_ids=pos, attention_mask=causal,
                       use_cache=False).last_hidden_state
    assert (unbanded[0, -1] - want[0, -1]).abs().max() > 1e-3


def test_band_mask_matches_the_position_rule():
    """band_mask on a left-padded causal mask vs the rule i - j < window written on positions (float64 loop)."""
    seed = _seed()
    g = torch.Generator().manual_seed(seed)
    B, P, window = 3, 9, 3
    real = torch.ones(B, P, dtype=torch.bool)
    for b in range(B):
        real[b, :int(torch.randint(0, 5, (1,), generator=g))] = False
    neg = torch.finfo(torch.float64).min
    pos = real.long().cumsum(-1) - 1
    mask = torch.full((B, 1, P, P), neg, dtype=torch.float64)
    want = mask.clone()
    for b in range(B):
        for i in range(P):
            for j in range(P):
                if j <= i and real[b, j] and real[b, i]:
                    mask[b, 0, i, j] = 0
                    if pos[b, i] - pos[b, j] < window:
                        want[b, 0, i, j] = 0
            if not real[b, i]:
                mask[b, 0, i, i] = want[b, 0, i, i] = 0  # a pad query sees itself only
    assert torch.equal(band_mask(mask, window), want), f"seed {seed}"
