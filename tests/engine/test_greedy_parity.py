"""No reward: greedy decoding must equal HF generate(do_sample=False) token for token."""
import pytest
import torch

from rgd_engine import Engine, GenerationConfig

PROMPTS = ["The quick brown", "Reward guided decoding steers a language model with", "News:"]


def hf_greedy(lm, prompts, max_new, stop=None):
    tok = lm.tokenizer
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    kw = {"stop_strings": list(stop), "tokenizer": tok} if stop else {}
    out = lm.hf_model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id, **kw)
    return [row[enc["input_ids"].shape[1]:].tolist() for row in out]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("stop", [(), ("e",)])
def test_greedy_equals_hf_generate(tiny_dirs, load, arch, stop):
    lm = load(tiny_dirs[arch])
    engine = Engine(lm)
    max_new = 24
    ours = engine.generate(PROMPTS, config=GenerationConfig(max_new_tokens=max_new, stop=stop))
    ref = hf_greedy(lm, PROMPTS, max_new, stop)
    assert len({len(lm.tokenizer(p)["input_ids"]) for p in PROMPTS}) == 3  # really different lengths
    for o, r in zip(ours, ref):
        assert o.token_ids == r[:len(o.token_ids)]
        rest = r[len(o.token_ids):]
        # HF pads a finished row; our row must stop exactly where HF's stops
        assert all(t == lm.tokenizer.pad_token_id for t in rest), (o.token_ids, r)
        if stop and o.finish_reason == "stop":
            assert stop[0] not in o.text
            assert stop[0] in lm.tokenizer.decode(o.token_ids)
    if stop:
        assert any(o.finish_reason == "stop" for o in ours)


def test_greedy_without_heads_ignores_weight_and_k(tiny_dirs, load):
    lm = load(tiny_dirs["llama"])
    engine = Engine(lm)
    a = engine.generate(PROMPTS, max_new_tokens=10, k=3, weight=5.0)
    b = engine.generate(PROMPTS, max_new_tokens=10)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]


def test_eager_attention_gives_same_tokens(tiny_dirs, load):
    a = Engine(load(tiny_dirs["llama"], "eager")).generate(PROMPTS, max_new_tokens=12)
    b = Engine(load(tiny_dirs["llama"], "sdpa")).generate(PROMPTS, max_new_tokens=12)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]


def test_sampling_is_seeded_and_topk1_is_greedy(tiny_dirs, load):
    engine = Engine(load(tiny_dirs["llama"]))
    s1 = engine.generate(PROMPTS, max_new_tokens=12, sample=True, seed=7, temperature=1.5)
    s2 = engine.generate(PROMPTS, max_new_tokens=12, sample=True, seed=7, temperature=1.5)
    s3 = engine.generate(PROMPTS, max_new_tokens=12, sample=True, seed=8, temperature=1.5)
    assert [x.token_ids for x in s1] == [x.token_ids for x in s2]
    assert [x.token_ids for x in s1] != [x.token_ids for x in s3]
    g = engine.generate(PROMPTS, max_new_tokens=12)
    t1 = engine.generate(PROMPTS, max_new_tokens=12, sample=True, seed=3, top_k=1)
    assert [x.token_ids for x in g] == [x.token_ids for x in t1]


def test_bad_generation_config_is_rejected(tiny_dirs, load):
    engine = Engine(load(tiny_dirs["llama"]))
    for bad in ({"max_new_tokens": 0}, {"k": 0}, {"temperature": 0.0}, {"top_p": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            engine.generate(PROMPTS, **bad)
    with pytest.raises(ValueError, match="unknown fields"):
        engine.generate(PROMPTS, max_tokens=3)


def test_eos_stops_a_row_unless_ignored(tiny_dirs, load):
    engine = Engine(load(tiny_dirs["llama"]))
    first = engine.generate(PROMPTS[:1], max_new_tokens=6)[0].token_ids
    engine.decoder.eos_ids = {first[1]}  # this engine's decoder only: pretend the second greedy token is EOS
    stopped = engine.generate(PROMPTS[:1], max_new_tokens=6)[0]
    forced = engine.generate(PROMPTS[:1], max_new_tokens=6, ignore_eos=True)[0]
    assert stopped.token_ids == first[:2] and stopped.finish_reason == "eos"
    assert forced.token_ids == first and forced.finish_reason == "length"
