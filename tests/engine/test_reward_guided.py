"""Reward-guided decoding (ARGS) against independent recomputations."""
import pytest
import torch

from rgd_engine import Engine, GenerationConfig, HeadBank
from rgd_engine.errors import TokenizerMismatchError

PROMPTS = ["The quick brown", "Reward guided decoding steers", "Breaking news: the city council"]


def make_bank(d, users, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    bank = HeadBank(d, capacity=2)
    for u in users:
        bank.add(u, torch.randn(d, generator=g) * scale, float(torch.randn(1, generator=g)))
    return bank


@torch.no_grad()
def full_hidden(lm, ids):
    """Final-norm hidden state at the last token of one whole sequence, no cache."""
    out = lm.base(input_ids=torch.tensor([ids]), use_cache=False).last_hidden_state
    return out[0, -1]


@torch.no_grad()
def brute_force_args(policy, backbone, prompt_ids, w_u, b_u, weight, k, steps):
    """ARGS written from the definition: recompute everything from scratch every step."""
    seq = list(prompt_ids)
    out = []
    for _ in range(steps):
        logits = policy.hf_model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1]
        lp = torch.log_softmax(logits.float(), -1)
        top = torch.topk(lp, k)
        scores = [float(top.values[j]) + weight * (float(full_hidden(backbone, seq + [int(v)]) @ w_u) + b_u)
                  for j, v in enumerate(top.indices)]
        best = int(top.indices[max(range(k), key=lambda j: scores[j])])
        seq.append(best)
        out.append(best)
        if best == 0:
            break
    return out


@pytest.mark.parametrize("arch,separate", [("llama", False), ("gpt2", False), ("llama", True)])
def test_tree_mask_rewards_equal_naive_recomputation(tiny_dirs, load, arch, separate):
    policy = load(tiny_dirs[arch])
    reward = load(tiny_dirs["rm"]) if separate else None
    engine = Engine(policy, reward)
    bank = make_bank(engine.hidden_size, ["a", "b"], seed=0)
    outs = engine.generate(PROMPTS, users=["a", "b", None], heads=bank, k=4, weight=0.5, max_new_tokens=6,
                           return_scores=True)
    backbone = reward or policy
    checked = 0
    for prompt, user, o in zip(PROMPTS, ["a", "b", None], outs):
        ids = engine.encode(prompt)
        for t, step in enumerate(o.steps):
            for j, v in enumerate(step["candidates"]):
                if user is None:
                    want = 0.0
                else:
                    w, b = bank.head(user)
                    want = float(full_hidden(backbone, ids + o.token_ids[:t] + [v]) @ w) + b
                assert step["reward"][j] == pytest.approx(want, abs=1e-4, rel=1e-4)
                checked += 1
            assert step["score"][step["chosen"]] == max(step["score"])
    assert checked >= 2 * 4 * 6


@pytest.mark.parametrize("arch,separate", [("llama", False), ("gpt2", False), ("llama", True)])
def test_rgd_greedy_equals_brute_force_args(tiny_dirs, load, arch, separate):
    policy = load(tiny_dirs[arch])
    reward = load(tiny_dirs["rm"]) if separate else None
    engine = Engine(policy, reward)
    bank = make_bank(engine.hidden_size, ["a", "b"], seed=1)
    users = ["a", "b", "a"]
    outs = engine.generate(PROMPTS, users=users, heads=bank, k=5, weight=1.5, max_new_tokens=8)
    plain = engine.generate(PROMPTS, max_new_tokens=8)
    for prompt, user, o in zip(PROMPTS, users, outs):
        w, b = bank.head(user)
        ref = brute_force_args(policy, reward or policy, engine.encode(prompt), w, b, 1.5, 5, 8)
        assert o.token_ids == ref
    assert [o.token_ids for o in outs] != [p.token_ids for p in plain]  # the reward really steered


def test_mixed_user_batch_equals_each_user_alone(tiny_dirs, load):
    engine = Engine(load(tiny_dirs["llama"]))
    users = [f"u{i}" for i in range(5)]
    bank = make_bank(engine.hidden_size, users, seed=2)
    prompts = [PROMPTS[i % 3] for i in range(5)]
    weights = [0.5, 1.0, 2.0, 0.0, 3.0]
    mixed = engine.generate(prompts, users=users, heads=bank, k=4, max_new_tokens=8, weights=weights)
    for p, u, w, m in zip(prompts, users, weights, mixed):
        alone = engine.generate([p], users=[u], heads=bank, k=4, max_new_tokens=8, weight=w)[0]
        assert alone.token_ids == m.token_ids
    assert len({tuple(m.token_ids) for m in mixed[:3]}) > 1


def test_zero_weight_rows_decode_greedily(tiny_dirs, load):
    engine = Engine(load(tiny_dirs["gpt2"]))
    bank = make_bank(engine.hidden_size, ["a"], seed=3)
    guided = engine.generate(PROMPTS, users=["a"] * 3, heads=bank, k=6, weights=[0.0, 0.0, 0.0], max_new_tokens=8)
    # all-zero weights take the plain path; compare with a guided batch holding one zero-weight row
    mixed = engine.generate(PROMPTS, users=["a"] * 3, heads=bank, k=6, weights=[0.0, 4.0, 0.0], max_new_tokens=8)
    plain = engine.generate(PROMPTS, max_new_tokens=8)
    assert [g.token_ids for g in guided] == [p.token_ids for p in plain]
    assert mixed[0].token_ids == plain[0].token_ids and mixed[2].token_ids == plain[2].token_ids


def test_sampled_rgd_is_seeded(tiny_dirs, load):
    engine = Engine(load(tiny_dirs["llama"]))
    bank = make_bank(engine.hidden_size, ["a"], seed=4)
    kw = dict(users=["a"] * 3, heads=bank, k=8, weight=1.0, max_new_tokens=10, sample=True, temperature=2.0)
    a, b, c = (engine.generate(PROMPTS, seed=s, **kw) for s in (1, 1, 2))
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]


def test_head_swap_is_seen_by_next_generate_without_realloc(tiny_dirs, load):
    engine = Engine(load(tiny_dirs["llama"]))
    bank = make_bank(engine.hidden_size, ["a"], seed=5)
    ptr = bank.W.data_ptr()
    before = engine.generate(PROMPTS[:1], users=["a"], heads=bank, k=6, weight=3.0, max_new_tokens=8)[0]
    bank.replace("a", -bank.head("a")[0])
    after = engine.generate(PROMPTS[:1], users=["a"], heads=bank, k=6, weight=3.0, max_new_tokens=8)[0]
    assert bank.W.data_ptr() == ptr
    assert before.token_ids != after.token_ids


def test_separate_reward_model_must_share_tokenizer(tiny_dirs, load, tmp_path):
    from tiny_models import make_tokenizer, save_tiny

    other = save_tiny(tmp_path / "other", "llama", seed=9, tokenizer=make_tokenizer(vocab_size=300))
    with pytest.raises(TokenizerMismatchError, match="other.*vocab size|vocab size.*llama"):
        Engine(load(tiny_dirs["llama"]), load(other))


def test_logits_processor_agrees_with_engine(tiny_dirs, load):
    from rgd_engine.logits_processor import ARGSLogitsProcessor

    lm = load(tiny_dirs["llama"])
    engine = Engine(lm)
    bank = make_bank(engine.hidden_size, ["a", "b"], seed=6)
    users = ["a", "b", None]
    ours = engine.generate(PROMPTS, users=users, heads=bank, k=4, weight=2.0, max_new_tokens=8)
    tok = lm.tokenizer
    tok.padding_side = "left"
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    proc = ARGSLogitsProcessor(lm, bank, users, enc["attention_mask"], k=4, weight=2.0)
    out = lm.hf_model.generate(**enc, max_new_tokens=8, do_sample=False, logits_processor=[proc],
                               pad_token_id=tok.pad_token_id)
    for o, row in zip(ours, out):
        ref = row[enc["input_ids"].shape[1]:].tolist()
        assert o.token_ids == ref[:len(o.token_ids)]


def test_users_without_bank_is_an_error(tiny_dirs, load):
    engine = Engine(load(tiny_dirs["llama"]))
    with pytest.raises(ValueError, match="no head bank"):
        engine.generate(PROMPTS[:1], users=["a"])


@pytest.mark.parametrize("arch,forward", [("llama", "fast"), ("llama", "hf"), ("gpt2", "hf")])
def test_args_with_k1_is_greedy_and_its_rewards_are_the_recomputation(tiny_dirs, monkeypatch, arch, forward):
    """k = 1: the only candidate is the policy's argmax, so ARGS decodes greedily whatever the head, and each
    step's reward is r_u of the sequence with that token. The HF cache storage (gpt2, llama with RGD_FORWARD=hf)
    commits one candidate out of one, which must not shorten the cache."""
    from rgd_engine.models import load_causal_lm

    monkeypatch.setenv("RGD_FORWARD", forward)
    policy = load_causal_lm(str(tiny_dirs[arch]))
    assert policy.forward_kind == forward
    engine = Engine(policy)
    bank = make_bank(engine.hidden_size, ["a"], seed=7)
    greedy = engine.generate(PROMPTS, max_new_tokens=8, ignore_eos=True)
    guided = engine.generate(PROMPTS, users=["a"] * 3, heads=bank, k=1, weight=2.0, max_new_tokens=8,
                             ignore_eos=True, return_scores=True)
    assert [g.token_ids for g in guided] == [g.token_ids for g in greedy]
    w_u, b_u = bank.head("a")
    for prompt, g in zip(PROMPTS, guided):
        seq = engine.encode(prompt)
        for tok, step in zip(g.token_ids, g.steps):
            seq = seq + [tok]
            assert step["candidates"] == [tok]
            assert step["reward"][0] == pytest.approx(float(full_hidden(policy, seq) @ w_u) + b_u, abs=1e-4, rel=1e-4)
