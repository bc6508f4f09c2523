"""Policy accuracy from the one-forward candidate tree vs a brute-force per-position recomputation."""
import math

import pytest
import torch

from rgd_engine import Engine
from rgd_engine.policy_accuracy import candidate_states, pair_accuracy, sequence_scores


@torch.no_grad()
def brute_force_steps(policy, backbone, x, y, k):
    """Per step t: (top-k ids, {v: (log pi(v), h(x o y<t o v))} over C_t), every model call on a full sequence."""
    steps = []
    for t in range(len(y)):
        prefix = x + y[:t]
        logits = policy.hf_model(input_ids=torch.tensor([prefix]), use_cache=False).logits[0, -1].double()
        lp = torch.log_softmax(logits, -1)
        top = torch.topk(lp, k).indices.tolist()
        cands = top + ([y[t]] if y[t] not in top else [])
        hs = {v: backbone.base(input_ids=torch.tensor([prefix + [v]]), use_cache=False).last_hidden_state[0, -1]
              for v in cands}
        steps.append((top, {v: (float(lp[v]), hs[v].double()) for v in cands}))
    return steps


def brute_force_score(steps, y, w_head, b_head, weight, strict, reduce):
    """S(y) straight from the definition."""
    terms = []
    for t, (top, cands) in enumerate(steps):
        scores = {v: lp + weight * (float(h @ w_head.double()) + b_head) for v, (lp, h) in cands.items()}
        term = scores[y[t]] - math.log(sum(math.exp(v) for v in scores.values()))
        terms.append(-math.inf if strict and y[t] not in top else term)
    return sum(terms) / len(terms) if reduce == "mean" else sum(terms)


@pytest.mark.parametrize("arch,separate", [("llama", False), ("gpt2", False), ("llama", True)])
def test_tree_policy_scores_equal_brute_force(tiny_dirs, load, arch, separate):
    policy = load(tiny_dirs[arch])
    reward = load(tiny_dirs["rm"]) if separate else None
    engine = Engine(policy, reward)
    backbone = reward or policy
    g = torch.Generator().manual_seed(11)
    d = backbone.hidden_size
    W, b = torch.randn(2, d, generator=g) * 2, torch.randn(2, generator=g)
    weights = torch.tensor([0.0, 0.7, 3.0])
    x = engine.encode("Breaking news: the city")
    # a response that mixes likely tokens (from greedy decoding) with an unlikely one, so gold falls in and out of top-k
    greedy = engine.generate(["Breaking news: the city"], max_new_tokens=4)[0].token_ids
    y = greedy[:3] + engine.encode(" frog")[-1:] + greedy[3:]
    k = 3
    cs = candidate_states(policy, backbone, x, y, k)
    assert cs.states.shape == (len(y), k + 1, d) and cs.logprob.shape == (len(y), k + 1)
    assert (cs.gold_index < k).any() and (cs.gold_index == k).any()
    steps = brute_force_steps(policy, backbone, x, y, k)
    for strict in (False, True):
        for reduce in ("mean", "sum"):
            got = sequence_scores(cs, W, b, weights, strict=strict, reduce=reduce)  # [H, Nw]
            for h in range(2):
                for i, w in enumerate(weights.tolist()):
                    want = brute_force_score(steps, y, W[h], float(b[h]), w, strict, reduce)
                    if math.isinf(want):
                        assert math.isinf(got[h, i]) and got[h, i] < 0
                    else:
                        assert float(got[h, i]) == pytest.approx(want, abs=1e-4, rel=1e-4)


def test_pair_accuracy_counts_ties_as_wrong():
    sc = torch.tensor([[1.0, 0.0], [2.0, 5.0], [3.0, 3.0]])
    sr = torch.tensor([[0.0, 0.0], [3.0, 1.0], [3.0, 2.0]])
    out = pair_accuracy(sc, sr)
    assert out["accuracy"].tolist() == pytest.approx([1 / 3, 2 / 3]) and out["ties"].tolist() == [1, 1]


def test_empty_response_is_rejected(tiny_dirs, load):
    lm = load(tiny_dirs["llama"])
    with pytest.raises(ValueError, match="non-empty response"):
        candidate_states(lm, lm, [5, 6], [], 3)


@torch.no_grad()
def brute_force_rule_score(policy, y, x, k, reward_of, weight, strict, reduce):
    """S(y) from the definition with any per-step reward r_t(v) = reward_of(prefix, v), full forwards only."""
    terms = []
    for t in range(len(y)):
        prefix = x + y[:t]
        lp = torch.log_softmax(policy.hf_model(input_ids=torch.tensor([prefix]), use_cache=False).logits[0, -1].double(), -1)
        top = torch.topk(lp, k).indices.tolist()
        cands = top + ([y[t]] if y[t] not in top else [])
        scores = {v: float(lp[v]) + weight * reward_of(prefix, v) for v in cands}
        term = scores[y[t]] - math.log(sum(math.exp(s) for s in scores.values()))
        terms.append(-math.inf if strict and y[t] not in top else term)
    return sum(terms) / len(terms) if reduce == "mean" else sum(terms)


def _assert_score(got, want):
    if math.isinf(want):
        assert math.isinf(got) and got < 0
    else:
        assert got == pytest.approx(want, abs=1e-4, rel=1e-4)


@pytest.mark.parametrize("arch,separate", [("llama", False), ("gpt2", False), ("llama", True)])
def test_token_and_logratio_policy_scores_equal_brute_force(tiny_dirs, load, arch, separate):
    from rgd_engine.policy_accuracy import logratio_sequence_scores, token_sequence_scores

    policy = load(tiny_dirs[arch])
    reward = load(tiny_dirs["rm"]) if separate else None
    engine = Engine(policy, reward)
    backbone = reward or policy
    g = torch.Generator().manual_seed(5)
    d, r = backbone.hidden_size, 3
    P, Q = torch.randn(2, r, d, generator=g), torch.randn(2, r, d, generator=g)
    weights = torch.tensor([0.0, 0.6, 2.5])
    x = engine.encode("Breaking news: the city")
    cond = engine.encode("Council minutes. Breaking news: the city")
    greedy = engine.generate(["Breaking news: the city"], max_new_tokens=4)[0].token_ids
    y = greedy[:2] + engine.encode(" frog")[-1:] + greedy[2:]
    k = 3
    cs = candidate_states(policy, backbone, x, y, k, cond_prompt_ids=cond)
    assert cs.ids.shape == (len(y), k + 1) and cs.prefix.shape == (len(y), d)
    E = backbone.lm_head_weight.detach().double()

    def h_last(lm, ids):
        return lm.base(input_ids=torch.tensor([ids]), use_cache=False).last_hidden_state[0, -1].double()

    def lp_last(ids):
        return torch.log_softmax(policy.hf_model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].double(), -1)

    for strict, reduce in ((False, "mean"), (True, "sum")):
        tok = token_sequence_scores(cs, backbone.lm_head_weight, P, Q, weights, strict=strict, reduce=reduce)
        lr = logratio_sequence_scores(cs, weights, strict=strict, reduce=reduce)
        assert tok.shape == (2, 3) and lr.shape == (1, 3)
        for i, w in enumerate(weights.tolist()):
            for hd in range(2):
                A = P[hd].double().t() @ Q[hd].double()
                want = brute_force_rule_score(policy, y, x, k, lambda pre, v: float(E[v] @ (A @ h_last(backbone, pre))),
                                              w, strict, reduce)
                _assert_score(float(tok[hd, i]), want)
            n = len(x)
            want = brute_force_rule_score(policy, y, x, k,
                                          lambda pre, v: float(lp_last(cond + pre[n:])[v] - lp_last(pre)[v]),
                                          w, strict, reduce)
            _assert_score(float(lr[0, i]), want)


@pytest.mark.parametrize("arch,separate", [("llama", False), ("gpt2", False), ("llama", True)])
def test_shared_prompt_trees_equal_one_tree_per_response(tiny_dirs, load, arch, separate):
    """prompt_candidate_states shares the prompt's (and the context's) cached forward across responses: each
    result must equal candidate_states computed for that response alone, whatever else is in the list."""
    from rgd_engine.policy_accuracy import prompt_candidate_states

    policy = load(tiny_dirs[arch])
    backbone = load(tiny_dirs["rm"]) if separate else policy
    engine = Engine(policy, backbone if separate else None)
    x, cond = engine.encode("Breaking news: the city"), engine.encode("A profile line.\nBreaking news: the city")
    ys = [engine.encode(" council votes today")[-3:], engine.encode(" frog")[-1:], engine.encode(" a b c d e")[-5:]]
    together = prompt_candidate_states(policy, backbone, x, ys, 3, cond_prompt_ids=cond)
    for y, got in zip(ys, together):
        alone = candidate_states(policy, backbone, x, y, 3, cond_prompt_ids=cond)
        for f in ("logprob", "states", "prefix", "cond_logprob"):
            assert torch.allclose(getattr(got, f), getattr(alone, f), atol=1e-5), f
        assert torch.equal(got.ids, alone.ids) and torch.equal(got.gold_index, alone.gold_index)
