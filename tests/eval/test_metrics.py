import itertools
import math

import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer
from scipy import stats

from rgd_eval.metrics import (ROUGE_SETTINGS, bootstrap_ci, kendall_tau, rm_accuracy, rouge_per_example,
                              score_generation)
from rgd_eval.reward_models import PairFeatures


def test_rm_accuracy_brute_force_with_ties(gen):
    d = 6
    users, heads = {}, {}
    for u in ("a", "b", "c"):
        n = int(torch.randint(5, 15, (1,), generator=gen))
        ch, rj = torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen)
        rj[:2] = ch[:2]  # two exact ties per user
        users[u] = PairFeatures(ch, rj)
        heads[u] = (torch.randn(d, generator=gen), float(torch.randn(1, generator=gen)))
    out = rm_accuracy(heads, users)
    tot_c = tot_t = tot_n = 0
    for u, pf in users.items():
        w, b = heads[u]
        c = t = 0
        for x, y in zip(pf.chosen.tolist(), pf.rejected.tolist()):
            rc = sum(wi * xi for wi, xi in zip(w.tolist(), x)) + b
            rr = sum(wi * yi for wi, yi in zip(w.tolist(), y)) + b
            c += rc > rr + 1e-12
            t += x == y
        assert out["per_user"][u] == {"correct": c, "ties": t, "n": len(pf.chosen), "accuracy": c / len(pf.chosen)}
        tot_c, tot_t, tot_n = tot_c + c, tot_t + t, tot_n + len(pf.chosen)
    assert out["overall"] == {"correct": tot_c, "ties": tot_t, "n": tot_n, "accuracy": tot_c / tot_n}
    assert out["macro"] == pytest.approx(np.mean([v["accuracy"] for v in out["per_user"].values()]))
    with pytest.raises(KeyError):
        rm_accuracy({}, users)


def test_rouge_hand_examples():
    # hand: pred "the cat sat" vs ref "the cat": R1 P=2/3 R=1 F=0.8; ROUGE-L LCS=2 -> same.
    # stemming: "running dogs" vs "dog runs" -> stems {run, dog} both match; LCS = 1 (order swapped).
    per = rouge_per_example(["the cat sat", "running dogs", "zzz"], ["the cat", "dog runs", "a b"])
    assert per["rouge1"] == pytest.approx([0.8, 1.0, 0.0])
    assert per["rougeL"] == pytest.approx([0.8, 0.5, 0.0])
    ref = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True).score("the cat", "the cat sat")
    assert per["rouge1"][0] == ref["rouge1"].fmeasure
    assert ROUGE_SETTINGS["use_stemmer"] is True and ROUGE_SETTINGS["measure"] == "fmeasure"


def test_score_generation_matches_mean_and_checks_ids():
    golds = {"1": "Trump Signs Bill", "2": "Cats Are Great", "3": "Rain Tomorrow"}
    preds = {"1": "Trump signs a bill", "2": "Dogs are great", "3": "Sunny"}
    out = score_generation(preds, golds, n_boot=500, seed=1)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    r1 = [scorer.score(golds[i], preds[i])["rouge1"].fmeasure for i in ("1", "2", "3")]
    assert out["rouge1"]["mean"] == pytest.approx(np.mean(r1)) and out["n"] == 3
    assert out["rouge1"]["ci_low"] <= out["rouge1"]["mean"] <= out["rouge1"]["ci_high"]
    assert out["per_example"]["2"]["rouge1"] == pytest.approx(r1[1])
    with pytest.raises(ValueError, match="missing"):
        score_generation({"1": "x"}, golds)


def test_bootstrap_ci_brute_force_and_normal_width(fresh_seed):
    rng = np.random.default_rng(fresh_seed)
    x = rng.random(50)
    lo, hi = bootstrap_ci(x, n_boot=300, seed=7)
    # brute force: the same resampling, one replicate at a time
    r = np.random.default_rng(7)
    idx = r.integers(0, 50, size=(300, 50))
    means = sorted(float(np.mean([x[i] for i in row])) for row in idx)
    assert lo == pytest.approx(np.quantile(means, 0.025)) and hi == pytest.approx(np.quantile(means, 0.975))
    # and it is a sensible 95% CI: about mean +- 1.96 sd / sqrt(n)
    big = rng.normal(size=2000)
    lo, hi = bootstrap_ci(big, n_boot=2000, seed=0)
    half = 1.96 * big.std() / math.sqrt(len(big))
    assert hi - lo == pytest.approx(2 * half, rel=0.15)
    assert bootstrap_ci(big, seed=3) == bootstrap_ci(big, seed=3)


def _tau_b_brute(x, y):
    conc = disc = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if sx == 0 and sy == 0:
            continue
        if sx == 0:
            tx += 1
        elif sy == 0:
            ty += 1
        elif sx == sy:
            conc += 1
        else:
            disc += 1
    return (conc - disc) / math.sqrt((conc + disc + tx) * (conc + disc + ty))


def test_kendall_tau_b_brute_force_with_ties(fresh_seed):
    rng = np.random.default_rng(fresh_seed)
    x = rng.integers(0, 4, 15).astype(float)  # many ties
    y = x + rng.integers(-2, 3, 15)
    out = kendall_tau(x, y)
    assert out["tau"] == pytest.approx(_tau_b_brute(x, y))
    assert out["p_value"] == pytest.approx(stats.kendalltau(x, y, variant="b").pvalue)
    assert out["n"] == 15 and "variant='b'" in out["method"]


def test_kendall_tau_nan_and_constant():
    assert kendall_tau([1, 1, 1], [1, 2, 3])["tau"] is None
    with pytest.raises(ValueError):
        kendall_tau([1, float("nan"), 3], [1, 2, 3])
    out = kendall_tau([1, float("nan"), 3, 4], [1, 2, 3, 5], nan_policy="omit")
    assert out["tau"] == pytest.approx(1.0) and out["n"] == 3
