import itertools
import math

import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer
from scipy import stats

from rgd_eval.metrics import ROUGE_SETTINGS, kendall_tau, rm_accuracy, rouge_per_example, score_generation
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


def test_rouge_is_lamps_unstemmed_with_stemmed_secondary():
    # hand: pred "the cat sat" vs ref "the cat": R1 P=2/3 R=1 F=0.8; ROUGE-L LCS=2 -> same.
    # "running dogs" vs "dog runs": no stemming -> no shared token (LaMP's number: 0); stemmed -> {run, dog}
    # both match, LCS = 1 (order swapped). Texts are stripped first, as LaMP's evaluation does.
    preds, refs = ["the cat sat ", "running dogs", "zzz"], [" the cat", "dog runs", "a b"]
    per = rouge_per_example(preds, refs)
    assert per["rouge1"] == pytest.approx([0.8, 0.0, 0.0]) and per["rougeL"] == pytest.approx([0.8, 0.0, 0.0])
    stem = rouge_per_example(preds, refs, stemmer=True)
    assert stem["rouge1"] == pytest.approx([0.8, 1.0, 0.0]) and stem["rougeL"] == pytest.approx([0.8, 0.5, 0.0])
    plain = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    for k, (p, r) in enumerate(zip(preds, refs)):
        assert per["rouge1"][k] == plain.score(r.strip(), p.strip())["rouge1"].fmeasure
    assert "use_stemmer=False" in ROUGE_SETTINGS["headline"] and ROUGE_SETTINGS["measure"] == "fmeasure"


def test_score_generation_matches_mean_user_ci_and_checks_ids():
    golds = {"1": "Trump Signs Bill", "2": "Cats Are Great", "3": "Rain Tomorrow", "4": "Cats Are Great Again"}
    preds = {"1": "Trump signs a bill", "2": "Dogs are great", "3": "Sunny", "4": "cats are great"}
    users = {"1": "a", "2": "a", "3": "b", "4": "c"}
    out = score_generation(preds, golds, users, n_boot=500, seed=1)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    r1 = [scorer.score(golds[i], preds[i])["rouge1"].fmeasure for i in ("1", "2", "3", "4")]
    assert out["rouge1"]["mean"] == pytest.approx(np.mean(r1)) and out["n"] == 4
    assert out["rouge1"]["n_users"] == 3
    assert out["rouge1"]["ci_low"] <= out["rouge1"]["mean"] <= out["rouge1"]["ci_high"]
    assert out["per_example"]["2"]["rouge1"] == pytest.approx(r1[1])
    assert set(out) >= {"rouge1_stemmed", "rougeL_stemmed"}
    with pytest.raises(ValueError, match="missing"):
        score_generation({"1": "x"}, golds, users)


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
