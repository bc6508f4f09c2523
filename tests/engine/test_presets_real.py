"""The real presets (opt-in: RGD_SLOW=1 or -m slow; each is downloaded and converted on first use).

Qwen2.5 runs the fast Llama-family forward: its hidden states against the HF modules of the same model, and
greedy tokens against HF generate. Gemma 3 runs the HF forward with the engine's masks: greedy parity on a
prompt longer than its 512-token sliding window, and tree-mask candidate rewards against whole-sequence
recomputations, where HF builds its own sliding-window masks."""
import random

import pytest
import torch

from rgd_engine import Engine, GenerationConfig, HeadBank
from rgd_engine.models import load_causal_lm

pytestmark = pytest.mark.slow

PROMPTS = ["def fibonacci(n):", "The capital of France is", "Reward-guided decoding steers a language model by"]


@pytest.fixture(scope="module", params=["qwen2.5-0.5b", "qwen2.5-1.5b"])
def qwen(request):
    lm = load_causal_lm(request.param)
    yield lm
    del lm


def _hf_greedy(lm, prompts, n):
    tok = lm.tokenizer
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    out = lm.hf_model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return [row[enc["input_ids"].shape[1]:].tolist() for row in out]


def _assert_greedy_parity(lm, prompts, n):
    ours = Engine(lm).generate(prompts, config=GenerationConfig(max_new_tokens=n))
    for o, ref in zip(ours, _hf_greedy(lm, prompts, n)):
        assert len(o.token_ids) > 0 and o.token_ids == ref[:len(o.token_ids)], (o.text, lm.tokenizer.decode(ref))


@torch.inference_mode()
def test_qwen_fast_forward_matches_the_hf_modules(qwen):
    assert qwen.forward_kind == "fast"
    tok = qwen.tokenizer
    ids = torch.tensor([tok(PROMPTS[2])["input_ids"]])
    n = ids.shape[1]
    cache = qwen.new_cache(1, n + 4)
    pad = torch.ones(1, n, dtype=torch.bool)
    got = qwen.forward(ids, torch.arange(n)[None], cache.prefill_mask(pad), cache)[0]  # [n, d]
    want = qwen.base(input_ids=ids, use_cache=False).last_hidden_state[0]
    scale = want.abs().max()
    torch.testing.assert_close(got / scale, want / scale, atol=2e-5, rtol=0)
    cache.advance(n, pad)
    cand = torch.tensor([[tok(" and")["input_ids"][-1], tok(" the")["input_ids"][-1]]])  # [1, 2]
    tree = qwen.forward(cand, torch.full((1, 2), n), cache.tree_mask(2), cache)[0]  # [2, d]
    for j in range(2):
        ref = qwen.base(input_ids=torch.cat([ids[0], cand[0, j:j + 1]])[None], use_cache=False).last_hidden_state[0, -1]
        torch.testing.assert_close(tree[j] / scale, ref / scale, atol=2e-5, rtol=0)


def test_qwen_greedy_equals_hf_generate(qwen):
    _assert_greedy_parity(qwen, PROMPTS, 16)


@pytest.fixture(scope="module")
def gemma():
    return load_causal_lm("gemma3-270m")


def test_gemma_greedy_equals_hf_generate_beyond_the_window(gemma):
    assert gemma.forward_kind == "hf" and gemma.window == 512
    long = "Here is a long story about a lighthouse keeper and the sea. " * 60
    assert len(gemma.tokenizer(long)["input_ids"]) > 600
    _assert_greedy_parity(gemma, [long, PROMPTS[1]], 6)


@torch.inference_mode()
def test_gemma_tree_rewards_equal_full_recomputation(gemma):
    seed = random.randrange(2 ** 31)
    g = torch.Generator().manual_seed(seed)
    bank = HeadBank(gemma.hidden_size, capacity=1)
    bank.add("a", torch.randn(gemma.hidden_size, generator=g) / gemma.hidden_size ** 0.5, 0.0)
    prompt = "The old lighthouse keeper walked down to the shore every evening. " * 50
    engine = Engine(gemma)
    out = engine.generate([prompt], users=["a"], heads=bank, k=3, weight=1.0, max_new_tokens=2, return_scores=True)[0]
    ids = engine.encode(prompt)
    assert len(ids) > 512
    w, b = bank.head("a")
    for t, step in enumerate(out.steps):
        for j, v in enumerate(step["candidates"]):
            seq = torch.tensor([ids + out.token_ids[:t] + [v]])
            want = float(gemma.base(input_ids=seq, use_cache=False).last_hidden_state[0, -1] @ w) + b
            assert step["reward"][j] == pytest.approx(want, abs=2e-3, rel=2e-3), f"seed {seed}, step {t}"
