"""Metrics: RM accuracy (sequence and token heads), ROUGE-1/L as LaMP computes them, Kendall tau-b.

ROUGE: the headline numbers are LaMP's (rouge-score's RougeScorer with use_stemmer=False on stripped texts,
F-measure, mean over examples); the stemmed scores are kept as a secondary column. Means carry user-clustered
bootstrap CIs (`rgd_eval.stats`): the user, not the query, is the unit of replication.
"""
from __future__ import annotations

import math
from importlib.metadata import version

import numpy as np
import torch
from rouge_score import rouge_scorer
from scipy import stats as sps

from .features import Head, PairFeatures
from .stats import user_cluster_bootstrap
from .token_models import TokenHead, TokenPairFeatures, sequence_rewards

ROUGE_TYPES = ("rouge1", "rougeL")
ROUGE_SETTINGS = {
    "package": "rouge-score", "version": version("rouge-score"), "rouge_types": list(ROUGE_TYPES),
    "headline": "use_stemmer=False, texts stripped (LaMP's evaluation: HF evaluate's rouge defaults)",
    "secondary": "use_stemmer=True (suffix `_stemmed`)", "measure": "fmeasure", "tokenizer": "rouge_score default",
    "ci": "user-clustered percentile bootstrap (users resampled, their queries kept together)",
}


def counts(correct: int, ties: int, n: int) -> dict:
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


def token_rm_accuracy(heads: dict[str, TokenHead], users: dict[str, TokenPairFeatures]) -> dict:
    """rm_accuracy for token-level heads: correct iff R_u(chosen) > R_u(rejected), R_u(y) = sum_t r_u(y_t | h_t)."""
    rewards = {}
    for u in sorted(users):
        if u not in heads:
            raise KeyError(f"no head for user {u!r}")
        P, Q = heads[u]
        rewards[u] = (sequence_rewards(P, Q, users[u].chosen), sequence_rewards(P, Q, users[u].rejected))
    return accuracy_from_rewards(rewards)


def accuracy_from_rewards(rewards: dict[str, tuple]) -> dict:
    """{user: (r_chosen [n], r_rejected [n])} -> rm_accuracy's output (strict >, ties counted and wrong)."""
    per_user = {}
    for u in sorted(rewards):
        r_c, r_r = (torch.as_tensor(x, dtype=torch.float64) for x in rewards[u])
        per_user[u] = counts(int((r_c > r_r).sum()), int((r_c == r_r).sum()), len(r_c))
    tot = [sum(v[k] for v in per_user.values()) for k in ("correct", "ties", "n")]
    macro = float(np.mean([v["accuracy"] for v in per_user.values()])) if per_user else None
    return {"overall": counts(*tot), "macro": macro, "per_user": per_user}


def expand_counts(per_user: dict[str, dict]) -> tuple[list[float], list[str]]:
    """Per-user {correct, n} -> one 0/1 value per pair and its user (the input of the user-level statistics)."""
    values, users = [], []
    for u in sorted(per_user):
        c, n = per_user[u]["correct"], per_user[u]["n"]
        values += [1.0] * c + [0.0] * (n - c)
        users += [u] * n
    return values, users


def rouge_per_example(predictions: list[str], references: list[str], stemmer: bool = False) -> dict[str, list[float]]:
    """ROUGE-1 / ROUGE-L F-measure per (prediction, reference) on stripped texts (LaMP: no stemming)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions vs {len(references)} references")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=stemmer)
    scores = [scorer.score(ref.strip(), pred.strip()) for pred, ref in zip(predictions, references)]
    return {t: [s[t].fmeasure for s in scores] for t in ROUGE_TYPES}


def score_generation(predictions: dict[str, str], golds: dict[str, str], users: dict[str, str],
                     n_boot: int = 2000, seed: int = 0) -> dict:
    """ROUGE of one system against the users' real outputs.

    -> {rouge1, rougeL, rouge1_stemmed, rougeL_stemmed: {mean, ci_low, ci_high, n, n_users}, n, per_example:
    {id: {rouge1, rougeL, rouge1_stemmed, rougeL_stemmed}}}. users: id -> user (the bootstrap's cluster).
    Ids must match exactly (a missing prediction is an error, not a 0)."""
    if set(predictions) != set(golds):
        missing, extra = sorted(set(golds) - set(predictions)), sorted(set(predictions) - set(golds))
        raise ValueError(f"prediction ids differ from gold ids: missing {missing[:5]}, extra {extra[:5]}")
    ids = sorted(golds)
    preds, refs = [predictions[i] for i in ids], [golds[i] for i in ids]
    per = rouge_per_example(preds, refs)
    per.update({f"{t}_stemmed": v for t, v in rouge_per_example(preds, refs, stemmer=True).items()})
    clusters = [users[i] for i in ids]
    out = {m: user_cluster_bootstrap(v, clusters, n_boot=n_boot, seed=seed) for m, v in per.items()}
    out["n"] = len(ids)
    out["per_example"] = {i: {m: per[m][k] for m in per} for k, i in enumerate(ids)}
    return out


def kendall_tau(x, y, nan_policy: str = "raise") -> dict:
    """Kendall tau-b (scipy, variant='b', explicit nan_policy). A constant input gives tau = None (undefined)."""
    if len(x) != len(y):
        raise ValueError(f"kendall_tau: {len(x)} vs {len(y)} values")
    res = sps.kendalltau(np.asarray(x, dtype=float), np.asarray(y, dtype=float), variant="b",
                         nan_policy=nan_policy)
    tau, p = float(res.statistic), float(res.pvalue)
    n = int(np.sum(~(np.isnan(np.asarray(x, dtype=float)) | np.isnan(np.asarray(y, dtype=float)))))
    return {"tau": None if math.isnan(tau) else tau, "p_value": None if math.isnan(p) else p, "n": n,
            "method": "scipy.stats.kendalltau(variant='b', nan_policy=%r)" % nan_policy}
