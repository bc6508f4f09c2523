"""PromptCache: single-row prefills shared across calls, against batched prefills and per-prompt decoding."""
import pytest
import torch

from rgd_engine import Engine, HeadBank, PromptCache
from rgd_engine.policy_accuracy import prompt_candidate_states
from rgd_engine.stream import Stream, left_pad

PROMPTS = ["The quick brown", "Reward guided decoding steers every", "Breaking news: the city council voted on"]


def _ids(engine, prompts):
    return [engine.encode(p) for p in prompts]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # tensor cache (fast forward) and HF StaticCache storage
def test_assembled_stream_equals_batched_prefill(tiny_dirs, load, arch):
    policy = load(tiny_dirs[arch])
    engine = Engine(policy)
    ids = _ids(engine, PROMPTS)
    x, mask = left_pad(ids, policy.tokenizer.pad_token_id, policy.device)
    with torch.inference_mode():
        ref = Stream(policy, x, mask, x.shape[1] + 4)
        got = PromptCache(policy).stream(ids, x.shape[1] + 4)
        torch.testing.assert_close(got.last_hidden, ref.last_hidden, rtol=1e-5, atol=1e-5)
        assert got.next_pos.tolist() == ref.next_pos.tolist() == [len(p) for p in ids]
        # one more step on each: same states, so the padded slots are masked the same way
        tok = torch.tensor([5, 7, 11])
        torch.testing.assert_close(got.step(tok), ref.step(tok), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batch_with_cache_equals_each_prompt_alone(tiny_dirs, load, arch):
    """Each row's prefill is the prompt alone, so the batch's greedy tokens are those of B = 1 calls."""
    engine = Engine(load(tiny_dirs[arch]))
    cache = engine.new_prompt_cache()
    batch = engine.generate(PROMPTS, max_new_tokens=8, ignore_eos=True, prompt_cache=cache)
    alone = [engine.generate([p], max_new_tokens=8, ignore_eos=True)[0] for p in PROMPTS]
    assert [g.token_ids for g in batch] == [g.token_ids for g in alone]
    assert cache.stats()["misses"] == 3 and cache.stats()["hits"] == 0


def _bank(d, seed=3):
    g = torch.Generator().manual_seed(seed)
    bank = HeadBank(d, capacity=2)
    for u in ("ann", "bob"):
        bank.add(u, torch.randn(d, generator=g) * 3, float(torch.randn(1, generator=g)))
    return bank


@pytest.mark.parametrize("rule", ["greedy", "args", "logratio", "bon-block"])
def test_hits_reproduce_misses_bit_for_bit(tiny_dirs, load, rule):
    """A second call from the cache gives exactly the first call's tokens (and scores), for every rule."""
    engine = Engine(load(tiny_dirs["llama"]))
    cache = engine.new_prompt_cache()
    kw = {"max_new_tokens": 6, "ignore_eos": True}
    if rule == "args":
        kw.update(rule="args", k=4, weight=1.5, users=["ann", "bob", "ann"], heads=_bank(engine.hidden_size),
                  return_scores=True)
    elif rule == "logratio":
        kw.update(rule="logratio", k=4, weight=1.0, cond_prompts=["Profile: frogs. " + p for p in PROMPTS])
    elif rule == "bon-block":
        kw.update(rule="bon-block", n_samples=3, block_size=2, temperature=0.8, seed=5,
                  users=["ann", "bob", "ann"], heads=_bank(engine.hidden_size), weight=1.0)
    first = engine.generate(PROMPTS, prompt_cache=cache, **kw)
    misses = cache.stats()["misses"]
    assert misses == (6 if rule == "logratio" else 3)  # the conditioned prompts are prefilled too
    again = engine.generate(PROMPTS, prompt_cache=cache, **kw)
    assert cache.stats()["misses"] == misses and cache.stats()["hits"] == misses
    assert [g.token_ids for g in again] == [g.token_ids for g in first]
    assert [g.steps for g in again] == [g.steps for g in first]


def test_lru_keeps_the_newest_within_max_bytes(tiny_dirs, load):
    policy = load(tiny_dirs["llama"])
    a, b, c = [5, 6, 7], [8, 9, 10], [11, 12, 13]  # token ids: three prompts of one size
    size = PromptCache(policy).get(a).cache.nbytes()
    cache = PromptCache(policy, max_bytes=2 * size)
    cache.get(a), cache.get(b), cache.get(a), cache.get(c)  # a was used last before c: b goes
    assert cache.stats() == {"entries": 2, "bytes": 2 * size, "hits": 1, "misses": 3}
    cache.get(a)
    assert cache.hits == 2
    cache.get(b)
    assert cache.misses == 4 and len(cache) == 2
    empty = PromptCache(policy, max_bytes=0)  # keeps nothing, still prefills
    first = empty.get(a)
    assert len(empty) == 0 and torch.equal(empty.get(a).last_hidden, first.last_hidden) and empty.misses == 2


def test_bad_inputs_say_what_is_wrong(tiny_dirs, load):
    policy, other = load(tiny_dirs["llama"]), load(tiny_dirs["rm"])
    with pytest.raises(ValueError, match="empty prompt"):
        PromptCache(policy).get([])
    with pytest.raises(ValueError, match="max_bytes"):
        PromptCache(policy, max_bytes=-1)
    with pytest.raises(ValueError, match="prompt_cache belongs to model .* not to the policy"):
        Engine(policy).generate(PROMPTS[:1], max_new_tokens=2, prompt_cache=PromptCache(other))


def test_candidate_trees_from_the_cache(tiny_dirs, load):
    """Trees whose prompt and conditioned prompt come from the cache equal the trees forwarded in one piece
    (fp32 rounding), and a second, all-hit call is bit-identical to the first."""
    policy = load(tiny_dirs["llama"])
    engine = Engine(policy)
    x, cond = engine.encode(PROMPTS[2]), engine.encode("Profile: frogs and ponds. " + PROMPTS[2])
    ys = [engine.encode(" the frog jumped"), engine.encode(" a vote was held today")]
    ref = prompt_candidate_states(policy, policy, x, ys, 4, cond_prompt_ids=cond)
    cache = PromptCache(policy)
    got = prompt_candidate_states(policy, policy, x, ys, 4, cond_prompt_ids=cond, prompt_cache=cache)
    assert cache.stats()["misses"] == 2 and len(cache) == 2
    again = prompt_candidate_states(policy, policy, x, ys, 4, cond_prompt_ids=cond, prompt_cache=cache)
    assert cache.stats()["hits"] == 2
    for r, g, a in zip(ref, got, again):
        for field in ("logprob", "states", "prefix", "cond_logprob"):
            torch.testing.assert_close(getattr(g, field), getattr(r, field), rtol=1e-4, atol=1e-4)
            assert torch.equal(getattr(a, field), getattr(g, field)), field
        assert torch.equal(g.ids, r.ids) and torch.equal(g.gold_index, r.gold_index)
