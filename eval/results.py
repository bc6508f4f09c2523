"""The results dict (results.json): data summary, assembly and a schema check the report relies on.

Schema:
  config: run settings, versions, stage_seconds, cache {computed, reused}
  data: {task, rejected_source, splits: {split: {users, users_skipped, queries, pairs, profile_pairs, ...}}, build}
  reward_models: {method: {variant: {rule, hparams, reward_scale, rm_accuracy, rm_accuracy_ci, rm_ties, rm_n,
                  rm_accuracy_validation, policy_accuracy: {w: acc}, policy_accuracy_validation: {w: acc},
                  validated_w, policy_accuracy_at_validated_w: {mean, ci_low, ci_high}, selected, per-user counts}}}
  kendall: {what, per_w: {w: {tau, ci_low, ci_high, p_value, p_value_permutation, n_points, n_users, reliability}},
            validated: {...}, pooled: {tau, p_value, n, dependence}}
  personalization: {method: {minus, diff, ci_low, ci_high, p_value, n_users}}
  generation: {system: {rouge1, rougeL, rouge1_stemmed, rougeL_stemmed: {mean, ci_low, ci_high, n, n_users}, n}}
  comparisons: {metric, family, tests: {"A - B": {diff, ci_low, ci_high, p_value, p_holm, n_users}}}
  paper: [{claim, ours, ci, verdict}]
  rouge_settings: metrics.ROUGE_SETTINGS
"""
from __future__ import annotations

from .lamp import LaMPDataset
from .preferences import PrefLaMP


def w_key(w: float) -> str:
    """JSON key of a guidance weight: 0.5 -> '0.5', 1.0 -> '1'."""
    return f"{float(w):g}"


def data_summary(ds: LaMPDataset, pref: PrefLaMP) -> dict:
    """Counts per split: users (kept by Pref-LaMP) and users_skipped, queries and profile items in the data,
    preference pairs by kind and pairs dropped; plus the builder's stats (build_stats.json) if the folder has it."""
    from .build import load_build_stats

    splits = {}
    for split, counts in ds.counts().items():
        st = pref.stats[split]
        splits[split] = {"users": st["users"], "users_skipped": st["users_skipped"], "queries": counts["queries"],
                         "profile_items": counts["profile_items"],
                         "pairs": st["profile_pairs"] + st["query_pairs"],
                         **{k: v for k, v in st.items() if k not in ("users", "users_skipped")}}
    return {"task": ds.task, "rejected_source": pref.rejected_source, "splits": splits,
            "build": load_build_stats(ds.root)}


def generation_entry(scores: dict) -> dict:
    """metrics.score_generation output without the per-example scores (those go to generation_examples)."""
    return {k: v for k, v in scores.items() if k != "per_example"}


def make_results(config: dict, data: dict, reward_models: dict, generation: dict) -> dict:
    """Assemble the core of results.json. generation: system name -> metrics.score_generation(...) output."""
    return {
        "config": config,
        "data": data,
        "reward_models": reward_models,
        "generation": {name: generation_entry(s) for name, s in generation.items()},
        "generation_examples": {name: s["per_example"] for name, s in generation.items() if "per_example" in s},
    }


def _require(obj, key, path):
    if not isinstance(obj, dict) or key not in obj:
        raise ValueError(f"results.json: missing key {path + '.' + key if path else key!r}")
    return obj[key]


def validate_results(results: dict) -> None:
    """Raise ValueError naming the first missing key the report needs."""
    for key in ("config", "data", "reward_models", "kendall", "generation", "comparisons", "personalization",
                "paper"):
        _require(results, key, "")
    for split, st in _require(results["data"], "splits", "data").items():
        for key in ("users", "queries", "pairs"):
            _require(st, key, f"data.splits.{split}")
    for method, variants in results["reward_models"].items():
        for variant, e in variants.items():
            for key in ("rule", "rm_accuracy", "policy_accuracy", "validated_w", "selected"):
                _require(e, key, f"reward_models.{method}.{variant}")
    for key in ("what", "per_w"):
        _require(results["kendall"], key, "kendall")
    for name, g in results["generation"].items():
        for metric in ("rouge1", "rougeL", "rouge1_stemmed"):
            for key in ("mean", "ci_low", "ci_high"):
                _require(_require(g, metric, f"generation.{name}"), key, f"generation.{name}.{metric}")
        _require(g, "n", f"generation.{name}")
