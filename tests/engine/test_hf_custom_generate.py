"""`model.generate(..., custom_generate=rgd_engine.hf.generate, ...)` returns Engine.generate's tokens, every rule."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from test_reward_guided import make_bank
from test_rules import make_token_bank

import rgd_engine.hf
from rgd_engine import Engine

PROMPTS = ["The quick brown", "Reward guided decoding steers", "Breaking news: the city council"]
USERS = ["a", None, "b"]


def left_padded(engine, texts):
    ids = [engine.encode(t) for t in texts]
    P, pad = max(map(len, ids)), engine.tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (P - len(r)) + r for r in ids])
    mask = torch.tensor([[0] * (P - len(r)) + [1] * len(r) for r in ids])
    return input_ids, mask


def assert_same_tokens(out, P, pad, gens):
    """Row b of out = its prompt, the engine's tokens, then pad up to the longest row."""
    T = max(len(g.token_ids) for g in gens)
    assert out.shape[1] == P + T
    for row, g in zip(out[:, P:].tolist(), gens):
        n = len(g.token_ids)
        assert row[:n] == g.token_ids and row[n:] == [pad] * (T - n), (row, g.token_ids)


CASES = {
    "greedy": dict(),
    "args": dict(rule="args", k=4, weight=2.0),
    "args-sampled": dict(rule="args", k=4, weight=2.0, sample=True, temperature=0.8, top_k=30, seed=3),
    "token": dict(rule="token", k=4, weight=1.5),
    "logratio": dict(rule="logratio", k=5, weight=0.8),
    "bon-block": dict(rule="bon-block", n_samples=3, block_size=3, temperature=0.9, top_k=20, seed=7),
}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("case", list(CASES))
def test_custom_generate_equals_engine_generate(tiny_dirs, load, arch, case):
    if arch == "gpt2" and case not in ("args", "greedy"):
        pytest.skip("one architecture per rule beyond args and greedy keeps the suite short")
    engine = Engine(load(tiny_dirs[arch]))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_dirs[arch])).eval()  # its own copy of the weights
    kw = dict(CASES[case])
    rule = kw.pop("rule", "args")
    users = USERS if rule in ("args", "token", "bon-block") and case != "greedy" else [None] * 3
    bank = None
    if rule == "token":
        bank = make_token_bank(engine.hidden_size, ["a", "b"], rank=2, seed=1)
    elif case != "greedy":
        bank = make_bank(engine.hidden_size, ["a", "b"], seed=1)
    conds = ["A story about foxes. " + p for p in PROMPTS] if rule == "logratio" else None
    want = engine.generate(PROMPTS, users=users, heads=bank, rule=rule, max_new_tokens=7, cond_prompts=conds, **kw)

    input_ids, mask = left_padded(engine, PROMPTS)
    hf_kw = dict(do_sample=kw.get("sample", rule == "bon-block"), max_new_tokens=7,
                 temperature=kw.get("temperature"), top_k=kw.get("top_k"),
                 pad_token_id=engine.tokenizer.pad_token_id)
    out = model.generate(input_ids, attention_mask=mask, custom_generate=rgd_engine.hf.generate, heads=bank,
                         users=users, rule=rule, k=kw.get("k", 10), w=kw.get("weight", 1.0),
                         cond_input_ids=[engine.encode(c) for c in conds] if conds else None,
                         n_samples=kw.get("n_samples", 4), block_size=kw.get("block_size", 8), seed=kw.get("seed"),
                         **{k: v for k, v in hf_kw.items() if v is not None})
    assert torch.equal(out[:, :input_ids.shape[1]], input_ids)
    assert_same_tokens(out, input_ids.shape[1], engine.tokenizer.pad_token_id, want)


def test_greedy_custom_generate_equals_hf_greedy(tiny_dirs):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_dirs["gpt2"])).eval()
    ids = torch.tensor([[5, 17, 40, 41], [1, 1, 60, 7]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    ref = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=6, min_new_tokens=6,
                         pad_token_id=1)
    got = model.generate(ids, attention_mask=mask, custom_generate=rgd_engine.hf.generate, do_sample=False,
                         max_new_tokens=6, pad_token_id=1, eos_token_id=None)
    assert torch.equal(got, ref)


def test_what_it_cannot_apply_is_an_error(tiny_dirs):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_dirs["llama"])).eval()
    ids = torch.tensor([[5, 17, 40]])
    with pytest.raises(ValueError, match="does not apply RepetitionPenaltyLogitsProcessor"):
        model.generate(ids, custom_generate=rgd_engine.hf.generate, repetition_penalty=1.3, max_new_tokens=2,
                       pad_token_id=1)
    with pytest.raises(ValueError, match="users were given but no head bank"):
        model.generate(ids, custom_generate=rgd_engine.hf.generate, users=["a"], max_new_tokens=2, pad_token_id=1)
