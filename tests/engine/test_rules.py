"""The `token`, `logratio` and `bon-block` rules against brute-force recomputations from their definitions."""
import pytest
import torch

from test_reward_guided import make_bank as make_seq_bank

from rgd_engine import Engine, HeadBank, TokenHeadBank, load_bank

PROMPTS = ["The quick brown", "Reward guided decoding steers", "Breaking news: the city council"]


def make_token_bank(d, users, rank, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    bank = TokenHeadBank(d, rank, capacity=1)
    for u in users:
        bank.add(u, torch.randn(rank, d, generator=g) * scale, torch.randn(rank, d, generator=g) * scale)
    return bank


@torch.no_grad()
def states(lm, ids):
    """Final-norm hidden states [T, d] and log-softmax [T, V] of one whole sequence, no cache."""
    out = lm.base(input_ids=torch.tensor([ids]), use_cache=False).last_hidden_state[0]
    return out, torch.log_softmax(out.float() @ lm.lm_head_weight.float().t(), -1)


@pytest.mark.parametrize("arch,separate", [("llama", False), ("gpt2", False), ("llama", True)])
def test_token_rule_equals_brute_force(tiny_dirs, load, arch, separate):
    policy = load(tiny_dirs[arch])
    reward = load(tiny_dirs["rm"]) if separate else None
    engine = Engine(policy, reward)
    backbone = reward or policy
    bank = make_token_bank(engine.hidden_size, ["a", "b"], rank=3, seed=4)
    users, k, w = ["a", "b", None], 4, 0.7
    outs = engine.generate(PROMPTS, users=users, heads=bank, rule="token", k=k, weight=w, max_new_tokens=6,
                           return_scores=True)
    checked = 0
    for prompt, user, o in zip(PROMPTS, users, outs):
        seq = engine.encode(prompt)
        for step in o.steps:
            _, lp = states(policy, seq)
            top = torch.topk(lp[-1], k)
            h_r = states(backbone, seq)[0][-1]
            if user is None:
                r = torch.zeros(k)
            else:
                P, Q = bank.head(user)
                A = P.t() @ Q  # [d, d]: fine for a brute force on a tiny model
                r = backbone.lm_head_weight.float()[top.indices] @ (A @ h_r.float())
            s = top.values + w * r
            assert step["candidates"] == top.indices.tolist()
            torch.testing.assert_close(torch.tensor(step["reward"]), r, rtol=1e-4, atol=1e-4)
            assert step["chosen"] == int(torch.argmax(s))
            seq = seq + [int(top.indices[int(torch.argmax(s))])]
            checked += 1
        assert o.token_ids == seq[len(engine.encode(prompt)):][:len(o.token_ids)]
    assert checked >= 12


def test_logratio_rule_equals_brute_force(tiny_dirs, load):
    policy = load(tiny_dirs["llama"])
    engine = Engine(policy)
    conds = ["A story about foxes. The quick brown", None, "Council minutes, 2024. Breaking news: the city council"]
    k, w = 5, 0.8
    outs = engine.generate(PROMPTS, rule="logratio", cond_prompts=conds, k=k, weight=w, max_new_tokens=6,
                           return_scores=True)
    for prompt, cond, o in zip(PROMPTS, conds, outs):
        seq, cseq = engine.encode(prompt), engine.encode(cond if cond is not None else prompt)
        for step in o.steps:
            lp = states(policy, seq)[1][-1]
            lpu = states(policy, cseq)[1][-1]
            top = torch.topk(lp, k)
            r = lpu[top.indices] - top.values
            torch.testing.assert_close(torch.tensor(step["reward"]), r, rtol=1e-4, atol=1e-4)
            v = int(top.indices[int(torch.argmax(top.values + w * r))])
            assert step["candidates"][step["chosen"]] == v
            seq, cseq = seq + [v], cseq + [v]
        if cond is None:
            assert all(abs(x) < 1e-4 for s in o.steps for x in s["reward"])


def test_logratio_at_w1_is_the_conditioned_greedy_within_top_k(tiny_dirs, load):
    """s = log pi + 1 * (log pi_u - log pi) = log pi_u: with k = V the rule is the conditioned policy's greedy."""
    policy = load(tiny_dirs["llama"])
    engine = Engine(policy)
    cond = "A story about foxes. The quick brown"
    got = engine.generate(["The quick brown"], rule="logratio", cond_prompts=[cond], k=policy.vocab_size, weight=1.0,
                          max_new_tokens=8)[0]
    want = engine.generate([cond], max_new_tokens=8)[0]
    assert got.token_ids == want.token_ids


def test_bon_block_n1_is_plain_sampling(tiny_dirs, load):
    policy = load(tiny_dirs["llama"])
    engine = Engine(policy)
    bank = make_seq_bank(engine.hidden_size, ["a"], seed=2)
    cfg = dict(max_new_tokens=10, temperature=0.9, top_k=20, seed=11)
    plain = engine.generate(PROMPTS, sample=True, **cfg)
    bon = engine.generate(PROMPTS, users=["a"] * 3, heads=bank, rule="bon-block", n_samples=1, block_size=3, **cfg)
    assert [g.token_ids for g in bon] == [g.token_ids for g in plain]


@pytest.mark.parametrize("arch,separate", [("llama", False), ("gpt2", False), ("llama", True)])
def test_bon_block_keeps_the_best_block_by_naive_reward(tiny_dirs, load, arch, separate):
    policy = load(tiny_dirs[arch])
    reward = load(tiny_dirs["rm"]) if separate else None
    engine = Engine(policy, reward)
    backbone = reward or policy
    bank = make_seq_bank(engine.hidden_size, ["a", "b"], seed=5)
    users, N, M = ["a", "b", None], 4, 3
    outs = engine.generate(PROMPTS, users=users, heads=bank, rule="bon-block", n_samples=N, block_size=M,
                           max_new_tokens=8, seed=3, ignore_eos=True, return_scores=True)
    for prompt, user, o in zip(PROMPTS, users, outs):
        kept = engine.encode(prompt)
        assert [len(s["block"][0]) for s in o.steps] == [3, 3, 2]
        for step in o.steps:
            if user is None:
                want = [0.0] * N
            else:
                w_u, b_u = bank.head(user)
                want = [float(states(backbone, kept + blk)[0][-1] @ w_u) + b_u for blk in step["block"]]
            assert step["reward"] == pytest.approx(want, abs=1e-4, rel=1e-4)
            assert step["chosen"] == max(range(N), key=lambda n: (want[n], -n))
            kept = kept + step["block"][step["chosen"]]
        assert o.token_ids == kept[len(engine.encode(prompt)):]
        assert len({tuple(b) for s in o.steps for b in s["block"]}) > len(o.steps)  # samples differ


def test_token_bank_round_trip_and_kind_checks(tmp_path, tiny_dirs, load):
    engine = Engine(load(tiny_dirs["llama"]))
    tb = make_token_bank(engine.hidden_size, ["a", "b", "c"], rank=2, seed=0)  # grows from capacity 1
    assert tb.capacity == 4 and tb.P.shape == (4, 2, engine.hidden_size)
    tb.save(tmp_path / "tok.safetensors")
    again = load_bank(tmp_path / "tok.safetensors")
    assert isinstance(again, TokenHeadBank) and again.rank == 2 and again.users == ["a", "b", "c"]
    for u in tb.users:
        assert all(torch.equal(x, y) for x, y in zip(tb.head(u), again.head(u)))
    with pytest.raises(Exception, match="holds 'token' heads, not 'sequence'"):
        HeadBank.from_file(tmp_path / "tok.safetensors")
    seq = make_seq_bank(engine.hidden_size, ["a"], seed=0)
    with pytest.raises(ValueError, match="rule 'token' needs a token-level head bank"):
        engine.generate(PROMPTS[:1], users=["a"], heads=seq, rule="token", max_new_tokens=2)
    with pytest.raises(ValueError, match="rule 'args' needs a sequence-level head bank"):
        engine.generate(PROMPTS[:1], users=["a"], heads=tb, rule="args", max_new_tokens=2)
    with pytest.raises(ValueError, match="logratio' needs cond_prompts"):
        engine.generate(PROMPTS[:1], rule="logratio", max_new_tokens=2)
    with pytest.raises(ValueError, match="unknown rule 'nope'"):
        engine.generate(PROMPTS[:1], rule="nope", max_new_tokens=2)
    with pytest.raises(Exception, match="P shape"):
        tb.add("d", torch.zeros(3, engine.hidden_size), torch.zeros(2, engine.hidden_size))


def test_token_head_swap_is_seen_next_call(tiny_dirs, load):
    """An in-place replace (no reallocation) changes the very next call's rewards to the new head's, recomputed
    here from P, Q and the prefix state."""
    engine = Engine(load(tiny_dirs["llama"]))
    tb = make_token_bank(engine.hidden_size, ["a"], rank=2, seed=0, scale=3.0)
    ptr = tb.P.data_ptr()
    kw = dict(users=["a"], heads=tb, rule="token", weight=2.0, max_new_tokens=6, return_scores=True)
    before = engine.generate(PROMPTS[:1], **kw)[0]
    g = torch.Generator().manual_seed(99)
    tb.replace("a", torch.randn(2, engine.hidden_size, generator=g) * 3, torch.randn(2, engine.hidden_size, generator=g) * 3)
    after = engine.generate(PROMPTS[:1], **kw)[0]
    assert tb.P.data_ptr() == ptr
    # step 0 sees the same prefix, hence the same candidates, under both heads
    assert before.steps[0]["candidates"] == after.steps[0]["candidates"]
    h = states(engine.policy, engine.encode(PROMPTS[0]))[0][-1].float()
    cands = torch.tensor(after.steps[0]["candidates"])
    E = engine.policy.lm_head_weight.float()[cands]  # [k, d]
    P, Q = tb.head("a")
    torch.testing.assert_close(torch.tensor(after.steps[0]["reward"]), E @ (P.t() @ (Q @ h)), rtol=1e-4, atol=1e-4)
    assert before.steps[0]["reward"] != pytest.approx(after.steps[0]["reward"], abs=1e-3)


def test_bon_block_honours_per_row_weights(tiny_dirs, load):
    """A row with a head but w = 0 is not reward-selected: it samples exactly as the same row without a user
    (the first of its N samples is kept), while w > 0 keeps the best block by r_u."""
    policy = load(tiny_dirs["llama"])
    engine = Engine(policy)
    bank = make_seq_bank(engine.hidden_size, ["a"], seed=5)
    cfg = dict(rule="bon-block", n_samples=4, block_size=3, max_new_tokens=9, seed=3, ignore_eos=True,
               return_scores=True)
    plain = engine.generate(PROMPTS[:1], users=[None], heads=bank, **cfg)[0]
    w0 = engine.generate(PROMPTS[:1], users=["a"], heads=bank, weights=[0.0], **cfg)[0]
    w1 = engine.generate(PROMPTS[:1], users=["a"], heads=bank, weights=[1.0], **cfg)[0]
    assert w0.token_ids == plain.token_ids
    assert [s["chosen"] for s in w0.steps] == [0, 0, 0]
    assert [s["chosen"] for s in w1.steps] == [max(range(4), key=lambda n: (s["reward"][n], -n)) for s in w1.steps]
    assert w1.token_ids != w0.token_ids, "the head must change this row's output (pick another seed if not)"
