"""The results dict (results.json): assembly from the stage outputs, Kendall analysis, schema check.

Schema (keys the report relies on):
  config: free-form run settings
  data: {task, splits: {split: {users, users_skipped, queries, pairs, profile_pairs, query_pairs, ...}}, build}
  reward_models: {method: {variant: {hparams, rm_accuracy, rm_ties, rm_n, policy_accuracy: {w: acc}}}}
  kendall: {tau, p_value, n, what, per_w: {w: {tau, p_value, n}}}
  generation: {system: {rouge1: {mean, ci_low, ci_high, n}, rougeL: {...}, n}}
  rouge_settings: metrics.ROUGE_SETTINGS
"""
from __future__ import annotations

from .lamp import LaMPDataset
from .metrics import ROUGE_SETTINGS, kendall_tau
from .preferences import PrefLaMP

KENDALL_WHAT = ("Kendall tau-b between RM accuracy (held-out query pairs of the test users) and RGD policy "
                "accuracy on the same pairs, one point per (method, variant, w) with w != 0 (at w = 0 every "
                "configuration is the base policy), pooled over the rules args, token and logratio; per_w: one "
                "point per (method, variant) at that w; per_rule: the pooled points of one rule")


def w_key(w: float) -> str:
    """JSON key of a guidance weight: 0.5 -> '0.5', 1.0 -> '1'."""
    return f"{float(w):g}"


def data_summary(ds: LaMPDataset, pref: PrefLaMP, build_stats: dict | None = None) -> dict:
    """Counts per split: users (kept by Pref-LaMP) and users_skipped, queries and profile items in the data,
    preference pairs by kind and pairs dropped; plus the builder's stats (authors skipped, ...) if given."""
    splits = {}
    for split, counts in ds.counts().items():
        st = pref.stats[split]
        splits[split] = {"users": st["users"], "users_skipped": st["users_skipped"], "queries": counts["queries"],
                         "profile_items": counts["profile_items"],
                         "pairs": st["profile_pairs"] + st["query_pairs"],
                         **{k: v for k, v in st.items() if k not in ("users", "users_skipped")}}
    return {"task": ds.task, "rejected_source": pref.rejected_source, "splits": splits, "build": build_stats}


def rm_entry(hparams: dict, rm_acc: dict, policy_accuracy: dict[float, float]) -> dict:
    """One (method, variant) row: rm_acc is metrics.rm_accuracy(...) output; policy_accuracy maps w -> accuracy."""
    overall = rm_acc["overall"]
    return {"hparams": dict(hparams), "rm_accuracy": overall["accuracy"], "rm_ties": overall["ties"],
            "rm_n": overall["n"], "rm_accuracy_macro": rm_acc["macro"],
            "policy_accuracy": {w_key(w): float(a) for w, a in sorted(policy_accuracy.items())}}


def kendall_rm_vs_policy(reward_models: dict) -> dict:
    points = [(e["rm_accuracy"], acc, w) for variants in reward_models.values() for e in variants.values()
              for w, acc in e["policy_accuracy"].items()]
    pooled = [(x, y) for x, y, w in points if float(w) != 0.0]
    out = kendall_tau([x for x, _ in pooled], [y for _, y in pooled]) if len(pooled) >= 2 else \
        {"tau": None, "p_value": None, "n": len(pooled), "method": "fewer than 2 points"}
    per_w = {}
    for w in sorted({w for _, _, w in points}, key=float):
        xs = [(x, y) for x, y, ww in points if ww == w]
        per_w[w] = kendall_tau([x for x, _ in xs], [y for _, y in xs]) if len(xs) >= 2 else \
            {"tau": None, "p_value": None, "n": len(xs), "method": "fewer than 2 points"}
    rules = sorted({e.get("rule", "args") for variants in reward_models.values() for e in variants.values()})
    per_rule = {}
    if len(rules) > 1:
        for rule in rules:
            sub = {m: {v: e for v, e in variants.items() if e.get("rule", "args") == rule}
                   for m, variants in reward_models.items()}
            per_rule[rule] = {k: v for k, v in kendall_rm_vs_policy({m: v for m, v in sub.items() if v}).items()
                              if k not in ("what", "per_w", "per_rule")}
    return {**out, "what": KENDALL_WHAT, "per_w": per_w, "per_rule": per_rule}


def generation_entry(scores: dict) -> dict:
    """metrics.score_generation output without the per-example scores (those go to generation_examples)."""
    return {k: v for k, v in scores.items() if k != "per_example"}


def make_results(config: dict, data: dict, reward_models: dict, generation: dict) -> dict:
    """Assemble and check results.json. generation: system name -> metrics.score_generation(...) output."""
    results = {
        "config": config,
        "data": data,
        "reward_models": reward_models,
        "kendall": kendall_rm_vs_policy(reward_models),
        "generation": {name: generation_entry(s) for name, s in generation.items()},
        "generation_examples": {name: s["per_example"] for name, s in generation.items() if "per_example" in s},
        "rouge_settings": ROUGE_SETTINGS,
    }
    validate_results(results)
    return results


def _require(obj, key, path):
    if not isinstance(obj, dict) or key not in obj:
        raise ValueError(f"results.json: missing key {path + '.' + key if path else key!r}")
    return obj[key]


def validate_results(results: dict) -> None:
    """Raise ValueError naming the first missing key the report needs."""
    for key in ("config", "data", "reward_models", "kendall", "generation"):
        _require(results, key, "")
    for split, st in _require(results["data"], "splits", "data").items():
        for key in ("users", "queries", "pairs"):
            _require(st, key, f"data.splits.{split}")
    for method, variants in results["reward_models"].items():
        for variant, e in variants.items():
            for key in ("rm_accuracy", "policy_accuracy"):
                _require(e, key, f"reward_models.{method}.{variant}")
    for key in ("tau", "p_value", "n", "what"):
        _require(results["kendall"], key, "kendall")
    for name, g in results["generation"].items():
        for metric in ("rouge1", "rougeL"):
            for key in ("mean", "ci_low", "ci_high"):
                _require(_require(g, metric, f"generation.{name}"), key, f"generation.{name}.{metric}")
        _require(g, "n", f"generation.{name}")
