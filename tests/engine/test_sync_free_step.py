"""The decode step reads nothing on the host: tokens reach it in blocks of sync_every steps, and the outputs do not
depend on the block size (EOS, stop strings, per-step scores, every rule)."""
import numpy as np
import pytest

from test_reward_guided import make_bank
from test_rules import make_token_bank

from benchmarks.host_syncs import syncs_per_step
from rgd_engine import Engine

PROMPTS = ["The quick brown", "Reward guided decoding steers", "Breaking news: the city council"]


def _kw(engine, rule):
    if rule == "logratio":
        return dict(rule="logratio", cond_prompts=["A profile. " + p for p in PROMPTS])
    if rule == "token":
        return dict(rule="token", heads=make_token_bank(engine.hidden_size, ["a"], rank=2, seed=1),
                    users=["a", None, "a"])
    bank = make_bank(engine.hidden_size, ["a"], seed=1)
    extra = dict(n_samples=3, block_size=2, seed=5) if rule == "bon-block" else {}
    return dict(rule=rule, heads=bank, users=["a", None, "a"], **extra)


@pytest.mark.parametrize("rule", ["plain", "args", "token", "logratio", "bon-block"])
def test_outputs_do_not_depend_on_the_host_block_size(tiny_dirs, load, rule):
    engine = Engine(load(tiny_dirs["llama"]))
    kw = dict(max_new_tokens=12, k=4, weight=1.5, stop=("\n", "a"), return_scores=True)
    if rule != "plain":
        kw.update(_kw(engine, rule))
    runs = [engine.generate(PROMPTS, sync_every=n, **kw) for n in (1, 3, 8, 64)]
    for run in runs[1:]:
        assert [(g.token_ids, g.text, g.finish_reason) for g in run] == \
               [(g.token_ids, g.text, g.finish_reason) for g in runs[0]]
        # finished rows leave the batch at the host reads, so the batch shapes differ, and with them the float
        # rounding (and the kernel: B * q <= SMALL_M rows go to small_linear): a reward near 0 from terms of
        # size ~25 moves by ~1e-5, hence an absolute tolerance at fp32 resolution of the terms
        for g, ref in zip(run, runs[0]):
            assert len(g.steps) == len(ref.steps)
            for s, r in zip(g.steps, ref.steps):
                assert s.keys() == r.keys()
                for key in s:
                    assert np.allclose(s[key], r[key], rtol=1e-5, atol=1e-4), key
    assert {g.finish_reason for g in runs[0]} >= {"stop"} or rule == "bon-block"


@pytest.mark.parametrize("case", ["greedy", "args", "logratio"])  # token shares logratio's kernel path
def test_a_step_reads_nothing_on_the_host(tiny_dirs, load, case):
    """With the torch backend (as on a GPU; the C++ CPU binding bounds-checks ids in CPU memory), n-step blocks
    cost one host read per n steps."""
    engine = Engine(load(tiny_dirs["llama"]), backend="torch")
    for every in (1, 4):
        assert syncs_per_step(engine, case, PROMPTS, new_tokens=5, sync_every=every) == pytest.approx(1 / every)


@pytest.mark.parametrize("rule", ["plain", "args", "token", "logratio", "bon-block"])
def test_finished_rows_leave_the_batch_and_each_row_equals_it_alone(tiny_dirs, load, monkeypatch, rule):
    """Rows that stop early leave the batch: the forwards' batch shrinks, and every row's tokens equal those of
    the row decoded alone (where it never shares a batch). bon-block samples from one generator in batch order,
    so its draws depend on the batch: only the shrink is checked there."""
    engine = Engine(load(tiny_dirs["llama"]))
    prompts = PROMPTS + ["Once upon a time", "A"]
    kw = dict(max_new_tokens=16, k=4, stop=tuple("aeiost"))
    if rule != "plain":
        kw["weights"] = [0.5, 1.5, 3.0, 1.0, 2.0]
        kw.update(_kw(engine, rule))
        if "users" in kw:  # two users, so a row given another row's head would decode differently
            kw["users"] = ["a", None, "b", "a", "b"]
            kw["heads"] = (make_token_bank(engine.hidden_size, ["a", "b"], rank=2, seed=3) if rule == "token"
                           else make_bank(engine.hidden_size, ["a", "b"], seed=3))
        if "cond_prompts" in kw:
            kw["cond_prompts"] = ["A profile. " + p for p in prompts]
    sizes = []
    forward = engine.policy.forward
    monkeypatch.setattr(engine.policy, "forward", lambda ids, *a: sizes.append(ids.shape[0]) or forward(ids, *a))
    batched = engine.generate(prompts, **kw)
    lengths = [len(g.token_ids) for g in batched]
    assert min(lengths) < max(lengths), lengths  # rows do finish at different steps
    assert min(sizes) < max(sizes), (lengths, sizes)  # ... and leave the batch
    if rule == "bon-block":
        return
    for i, (p, g) in enumerate(zip(prompts, batched)):
        one = {key: [v[i]] if isinstance(v, list) and len(v) == len(prompts) else v for key, v in kw.items()}
        alone = engine.generate([p], **one)[0]
        assert (alone.token_ids, alone.finish_reason) == (g.token_ids, g.finish_reason), (rule, i)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # the engine's tensor cache and the HF cache storage
@pytest.mark.parametrize("rule", ["plain", "args", "token", "logratio", "bon-block"])
def test_generation_reports_the_kv_bytes_of_the_call(tiny_dirs, load, arch, rule):
    """Generation.kv_bytes = layers x 2 x rows x kv heads x slots x head dim x bytes, summed over the call's caches
    (slots: prompt + new tokens + k scratch for args, + 1 otherwise; logratio adds the conditioned prompt's)."""
    engine = Engine(load(tiny_dirs[arch]))
    cfg = engine.policy.config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    per_slot = cfg.num_hidden_layers * 2 * kv_heads * (cfg.hidden_size // heads) * 4  # fp32

    def bytes_of(prompts, rows_per_prompt, extra):
        P = max(len(engine.encode(p)) for p in prompts)
        return per_slot * len(prompts) * rows_per_prompt * (P + 6 + extra)

    kw = dict(max_new_tokens=6, k=4, weight=1.0)
    if rule != "plain":
        kw.update(_kw(engine, rule))
    gens = engine.generate(PROMPTS, **kw)
    want = bytes_of(PROMPTS, 1, 4 if rule == "args" else 1)
    if rule == "logratio":
        want += bytes_of(kw["cond_prompts"], 1, 1)
    if rule == "bon-block":
        want = bytes_of(PROMPTS, 3, 1)
    assert {g.kv_bytes for g in gens} == {want}
