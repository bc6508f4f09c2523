"""The decode step reads nothing on the host: tokens reach it in blocks of sync_every steps, and the outputs do not
depend on the block size (EOS, stop strings, per-step scores, every rule)."""
import pytest
import torch

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
        assert [(g.token_ids, g.text, g.finish_reason, g.steps) for g in run] == \
               [(g.token_ids, g.text, g.finish_reason, g.steps) for g in runs[0]]
    assert {g.finish_reason for g in runs[0]} >= {"stop"} or rule == "bon-block"


@pytest.mark.parametrize("case", ["greedy", "args", "logratio"])  # token shares logratio's kernel path
def test_a_step_reads_nothing_on_the_host(tiny_dirs, load, case):
    """With the torch backend (as on a GPU; the C++ CPU binding bounds-checks ids in CPU memory), n-step blocks
    cost one host read per n steps."""
    engine = Engine(load(tiny_dirs["llama"]), backend="torch")
    for every in (1, 4):
        assert syncs_per_step(engine, case, PROMPTS, new_tokens=5, sync_every=every) == pytest.approx(1 / every)
