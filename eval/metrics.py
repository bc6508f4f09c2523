"""Metrics: RM accuracy, ROUGE-1/L with bootstrap CIs, Kendall tau-b."""
from __future__ import annotations

import math
from importlib.metadata import version

import numpy as np
import torch
from rouge_score import rouge_scorer
from scipy import stats

from .reward_models import Head, PairFeatures

ROUGE_TYPES = ("rouge1", "rougeL")
ROUGE_SETTINGS = {
    "package": "rouge-score", "version": version("rouge-score"), "rouge_types": list(ROUGE_TYPES),
    "use_stemmer": True, "split_summaries": False, "measure": "fmeasure", "tokenizer": "rouge_score default",
}


def _counts(correct: int, ties: int, n: int) -> dict:
    return {"correct": correct, "ties": ties, "n": n, "accuracy": correct / n if n else None}


def rm_accuracy(heads: dict[str, Head], users: dict[str, PairFeatures]) -> dict:
    """Strict pairwise accuracy: correct iff r_u(chosen) > r_u(rejected); exact ties are wrong and counted.

    Returns {"overall": {correct, ties, n, accuracy} over all pairs, "macro": mean per-user accuracy,
    "per_user": {user: {...}}}. Rewards are computed in float64 from the given features.
    """
    rewards = {}
    for u in sorted(users):
        if u not in heads:
            raise KeyError(f"no head for user {u!r}")
        w, b = heads[u]
        w = w.double()
        rewards[u] = (users[u].chosen.double() @ w + b, users[u].rejected.double() @ w + b)  # [n], [n]
    return accuracy_from_rewards(rewards)


def accuracy_from_rewards(rewards: dict[str, tuple]) -> dict:
    """{user: (r_chosen [n], r_rejected [n])} -> rm_accuracy's output (strict >, ties counted and wrong)."""
    per_user = {}
    for u in sorted(rewards):
        r_c, r_r = (torch.as_tensor(x, dtype=torch.float64) for x in rewards[u])
        per_user[u] = _counts(int((r_c > r_r).sum()), int((r_c == r_r).sum()), len(r_c))
    tot = [sum(v[k] for v in per_user.values()) for k in ("correct", "ties", "n")]
    macro = float(np.mean([v["accuracy"] for v in per_user.values()])) if per_user else None
    return {"overall": _counts(*tot), "macro": macro, "per_user": per_user}


def rouge_per_example(predictions: list[str], references: list[str]) -> dict[str, list[float]]:
    """ROUGE-1 / ROUGE-L F-measure per (prediction, reference), rouge-score with use_stemmer=True."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions vs {len(references)} references")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]  # score(target, prediction)
    return {t: [s[t].fmeasure for s in scores] for t in ROUGE_TYPES}


def bootstrap_ci(values, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (resampling examples with replacement, fixed seed)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci of no values")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)  # [n_boot]
    alpha = (1.0 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def summarize(values, n_boot: int = 2000, seed: int = 0) -> dict:
    lo, hi = bootstrap_ci(values, n_boot=n_boot, seed=seed)
    return {"mean": float(np.mean(values)), "ci_low": lo, "ci_high": hi, "n": len(values)}


def score_generation(predictions: dict[str, str], golds: dict[str, str], n_boot: int = 2000,
                     seed: int = 0) -> dict:
    """ROUGE of one system against the users' real outputs: {rouge1: {mean, ci_low, ci_high, n}, rougeL: ..., n,
    per_example: {id: {rouge1, rougeL}}}. Ids must match exactly (a missing prediction is an error, not a 0)."""
    if set(predictions) != set(golds):
        missing, extra = sorted(set(golds) - set(predictions)), sorted(set(predictions) - set(golds))
        raise ValueError(f"prediction ids differ from gold ids: missing {missing[:5]}, extra {extra[:5]}")
    ids = sorted(golds)
    per = rouge_per_example([predictions[i] for i in ids], [golds[i] for i in ids])
    out = {t: summarize(per[t], n_boot=n_boot, seed=seed) for t in ROUGE_TYPES}
    out["n"] = len(ids)
    out["per_example"] = {i: {t: per[t][k] for t in ROUGE_TYPES} for k, i in enumerate(ids)}
    return out


def kendall_tau(x, y, nan_policy: str = "raise") -> dict:
    """Kendall tau-b (scipy, variant='b', explicit nan_policy). A constant input gives tau = None (undefined)."""
    if len(x) != len(y):
        raise ValueError(f"kendall_tau: {len(x)} vs {len(y)} values")
    res = stats.kendalltau(np.asarray(x, dtype=float), np.asarray(y, dtype=float), variant="b",
                           nan_policy=nan_policy)
    tau, p = float(res.statistic), float(res.pvalue)
    n = int(np.sum(~(np.isnan(np.asarray(x, dtype=float)) | np.isnan(np.asarray(y, dtype=float)))))
    return {"tau": None if math.isnan(tau) else tau, "p_value": None if math.isnan(p) else p, "n": n,
            "method": "scipy.stats.kendalltau(variant='b', nan_policy=%r)" % nan_policy}
