"""The study's statistics, from the per-pair and per-query results of the stages (results.json's content).

The user is the unit of replication throughout (rgd_eval.stats): every mean has a user-clustered bootstrap CI;
system comparisons are paired over users (sign-flip permutation, Holm-adjusted over the family); Kendall tau
between RM accuracy and policy accuracy is computed per w with one point per configuration (rule, method,
variant), its CI from resampling users (both axes recomputed), and each axis's split-half reliability says how
much of a low tau noise alone could explain. The pooled tau over all w is secondary: the same heads and pairs
at several w are not independent points.
"""
from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np

from .metrics import ROUGE_SETTINGS, expand_counts, kendall_tau
from .results import data_summary, make_results, w_key
from .stats import (holm, kendall_user_bootstrap, paired_user_difference, split_half_reliability,
                    user_cluster_bootstrap)

PAPER_TAU = (0.08, 0.31)  # the motivating study's range of Kendall tau (RM accuracy vs policy accuracy)
PAPER_GAP = 0.2  # "20-point RM-accuracy gaps"
PAPER_MIN_PARAMS = 3e9    # its ICL-beats-RGD claim is for models >= 3B


def versions() -> dict:
    out = {}
    for pkg in ("rgd-engine", "torch", "transformers", "rouge-score", "scipy", "numpy", "rank-bm25"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def git_hash() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _counts_matrix(per_user_list: list[dict], users: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """[{user: {correct, n}}] per configuration -> correct [C, U], n [C, U]."""
    c = np.array([[d[u]["correct"] for u in users] for d in per_user_list], dtype=np.float64)
    n = np.array([[d[u]["n"] for u in users] for d in per_user_list], dtype=np.float64)
    return c, n


def _accuracy_ci(per_user: dict, args) -> dict:
    values, users = expand_counts(per_user)
    return user_cluster_bootstrap(values, users, n_boot=args.n_boot, seed=args.seed)


def reward_model_entries(evals: dict, weights: list[float], args) -> dict:
    """results.json's reward_models: {method: {variant: entry}} (see results.py for the fields)."""
    out: dict[str, dict] = {}
    for cfg in evals["configs"].values():
        test = cfg["rm_test"]
        pol_t, pol_v = cfg["policy_test"], cfg["policy_train"]
        jv = weights.index(cfg["validated_w"])
        entry = {
            "rule": cfg["rule"], "hparams": dict(cfg["hparams"]), "reward_scale": cfg["scale"],
            "rm_accuracy": test["overall"]["accuracy"], "rm_ties": test["overall"]["ties"], "rm_n": test["overall"]["n"],
            "rm_accuracy_ci": _accuracy_ci(test["per_user"], args), "rm_accuracy_macro": test["macro"],
            "rm_accuracy_per_user": test["per_user"],
            "rm_accuracy_validation": cfg["rm_validation"]["overall"]["accuracy"],
            "policy_accuracy": {w_key(w): float(pol_t["correct"][:, j].double().mean()) for j, w in enumerate(weights)},
            "policy_ties": {w_key(w): int(pol_t["ties"][:, j].sum()) for j, w in enumerate(weights)},
            "policy_accuracy_validation": {w_key(w): float(pol_v["correct"][:, j].double().mean())
                                           for j, w in enumerate(weights)},
            "validated_w": cfg["validated_w"],
            "policy_accuracy_at_validated_w": _accuracy_ci(pol_t["per_user"][jv], args),
            "policy_accuracy_per_user": {w_key(w): pol_t["per_user"][j] for j, w in enumerate(weights)},
            "selected": evals["selected"].get(cfg["name"]) == cfg["variant"],
        }
        out.setdefault(cfg["name"], {})[cfg["variant"]] = entry
    return out


def kendall_section(rms: dict, users: list[str], weights: list[float], args) -> dict:
    """Kendall tau-b of RM accuracy vs policy accuracy: per w and at the validated w (one point per
    configuration), with user-bootstrap CIs, permutation p-values and split-half reliabilities; pooled secondary."""
    entries = [e for variants in rms.values() for e in variants.values()]
    out = {"what": "Kendall tau-b between RM accuracy and policy accuracy on the test users' query pairs, one point "
                   "per configuration (rule, method, variant); CI: users resampled, both accuracies and tau "
                   "recomputed; p_value: scipy's, p_value_permutation: configurations' pairing permuted; "
                   "reliability: split-half (users halved at random) correlation of each axis across "
                   "configurations, Spearman-Brown corrected",
           "n_configurations": len(entries), "n_users": len(users), "per_w": {}}
    if len(entries) < 2:
        return {**out, "validated": None, "pooled": None}
    def one(sel, per_user_list):
        x_c, x_n = _counts_matrix([e["rm_accuracy_per_user"] for e in sel], users)
        y_c, y_n = _counts_matrix(per_user_list, users)
        res = kendall_user_bootstrap(x_c, x_n, y_c, y_n, n_boot=args.n_boot, n_perm=args.n_perm, seed=args.seed)
        res["reliability"] = {"rm_accuracy": split_half_reliability(x_c, x_n, seed=args.seed),
                              "policy_accuracy": split_half_reliability(y_c, y_n, seed=args.seed)}
        return res

    def at_validated(sel):
        return one(sel, [e["policy_accuracy_per_user"][w_key(e["validated_w"])] for e in sel])

    for w in weights:
        if w > 0:
            out["per_w"][w_key(w)] = one(entries, [e["policy_accuracy_per_user"][w_key(w)] for e in entries])
    out["validated"] = at_validated(entries)
    rules = sorted({e["rule"] for e in entries})
    out["per_rule"] = {r: at_validated([e for e in entries if e["rule"] == r]) for r in rules
                       if sum(e["rule"] == r for e in entries) >= 2} if len(rules) > 1 else {}
    pooled = [(e["rm_accuracy"], e["policy_accuracy"][w_key(w)]) for e in entries for w in weights if w > 0]
    out["pooled"] = {**kendall_tau([x for x, _ in pooled], [y for _, y in pooled]),
                     "dependence": f"{len(pooled)} points = {len(entries)} configurations x "
                                   f"{len([w for w in weights if w > 0])} weights on the same pairs and users: "
                                   "not independent; its p-value overstates certainty"}
    return out


def personalization_signal(rms: dict, args) -> dict:
    """RM accuracy of each method's selected variant minus the `global` head's (token methods: minus
    `token-global`), paired over the test users."""
    sel = {m: next(e for e in v.values() if e["selected"]) for m, v in rms.items() if any(e["selected"] for e in v.values())}
    out = {}
    for m, e in sel.items():
        base = "token-global" if e["rule"] == "token" else "global"
        if m == base or base not in sel:
            continue
        a, users = expand_counts(e["rm_accuracy_per_user"])
        b, users_b = expand_counts(sel[base]["rm_accuracy_per_user"])
        if users != users_b:
            continue
        out[m] = {"minus": base, **paired_user_difference(a, b, users, n_boot=args.n_boot, n_perm=args.n_perm,
                                                           seed=args.seed)}
    return out


def paired_comparisons(scores: dict, users_of: dict, args, metric: str = "rouge1") -> dict:
    """Paired differences of `metric` over users: ICL - each guided system, each guided system - zero-shot,
    ICL - zero-shot; Holm-adjusted over the whole family."""
    guided = sorted(s for s in scores if s not in ("zero-shot", "icl"))
    pairs = [("icl", s) for s in guided] + [(s, "zero-shot") for s in guided] + [("icl", "zero-shot")]
    pairs = [(a, b) for a, b in pairs if a in scores and b in scores]
    out = {}
    for a, b in pairs:
        ids = sorted(scores[a]["per_example"])
        out[f"{a} - {b}"] = paired_user_difference(
            [scores[a]["per_example"][i][metric] for i in ids], [scores[b]["per_example"][i][metric] for i in ids],
            [users_of[i] for i in ids], n_boot=args.n_boot, n_perm=args.n_perm, seed=args.seed)
    adjusted = holm({k: v["p_value"] for k, v in out.items()})
    for k, v in out.items():
        v["p_holm"] = adjusted[k]
    return {"metric": metric, "family": len(out), "tests": out}


def _validated_systems(rms: dict, generation: dict) -> dict[str, dict]:
    """rgd system name -> its method's selected entry, for the systems at their validated w."""
    out = {}
    for m, variants in rms.items():
        for e in variants.values():
            name = f"rgd/{m}/w={w_key(e['validated_w'])}"
            if e["selected"] and name in generation:
                out[name] = e
    return out


def paper_beside_us(results: dict, n_params: int) -> list[dict]:
    """Each claim of the motivating study next to our figure, its CI and a verdict."""
    rows = []
    k = results["kendall"].get("validated")
    if k and k.get("tau") is not None:
        lo, hi = k.get("ci_low"), k.get("ci_high")
        if lo is None:
            verdict = "cannot be tested (too few defined bootstrap taus)"
        elif hi < PAPER_TAU[0]:
            verdict = "disagrees: weaker (or negative) association than reported"
        elif lo > PAPER_TAU[1]:
            verdict = "disagrees: RM accuracy predicts policy accuracy more strongly than reported"
        elif PAPER_TAU[0] <= lo and hi <= PAPER_TAU[1]:
            verdict = "agrees: tau and its whole CI lie in the reported range"
        elif PAPER_TAU[0] <= k["tau"] <= PAPER_TAU[1]:
            verdict = "consistent but not confirmed: tau lies in the reported range, its CI reaches outside it"
        else:
            verdict = "inconclusive: tau lies outside the reported range, but its CI overlaps it"
        rows.append({"claim": "Kendall tau(RM acc, policy acc) is low: 0.08 - 0.31", "ours": k["tau"],
                     "ci": [lo, hi], "n": f"{k['n_points']} configurations, {k['n_users']} users",
                     "verdict": verdict})
    else:
        rows.append({"claim": "Kendall tau(RM acc, policy acc) is low: 0.08 - 0.31", "ours": None, "ci": None,
                     "verdict": "cannot be tested: tau undefined (an axis is constant)"})
    gen, tests = results["generation"], results["comparisons"]["tests"]
    systems = _validated_systems(results["reward_models"], gen)
    if len(systems) >= 2:
        (a, ea), (b, eb) = max(((x, y) for x in systems.items() for y in systems.items() if x[0] != y[0]),
                               key=lambda xy: xy[0][1]["rm_accuracy"] - xy[1][1]["rm_accuracy"])
        gap = ea["rm_accuracy"] - eb["rm_accuracy"]
        da, db = tests.get(f"icl - {a}"), tests.get(f"icl - {b}")
        diff = gen[a]["rouge1"]["mean"] - gen[b]["rouge1"]["mean"]
        if round(gap, 9) < PAPER_GAP:  # accuracies are counts / n: 0.995 - 0.795 is 0.19999999999999996
            verdict = (f"cannot be tested: the largest RM-accuracy gap between validated RGD systems is {gap:.3f} "
                       f"< {PAPER_GAP}")
        else:
            verdict = ("agrees" if abs(diff) < 0.02 else "disagrees") + ": ROUGE-1 differs by %.3f" % diff
        rows.append({"claim": "20-point RM-accuracy gaps come with near-identical ROUGE", "ours":
                     {"systems": [a, b], "rm_accuracy_gap": gap, "rouge1_difference": diff},
                     "ci": None if not (da and db) else "see comparisons", "verdict": verdict})
    rgd = [s for s in gen if s.startswith("rgd/")]
    pool = list(systems) or rgd   # validated systems first; else every generated RGD system, said so below
    claim = "ICL beats every RGD method for models >= 3B (+3 - 5 ROUGE-1 at 7B)"
    if not pool or "icl" not in gen:
        rows.append({"claim": claim, "ours": None, "ci": None,
                     "verdict": "cannot be tested: ICL or RGD generation was not run"})
        return rows
    best = max(pool, key=lambda s: gen[s]["rouge1"]["mean"])
    t = tests.get(f"icl - {best}")
    if n_params < PAPER_MIN_PARAMS:
        verdict = f"cannot be tested at this model size ({n_params / 1e6:.0f}M parameters < 3B)"
    elif t is None:
        verdict = f"cannot be tested: no paired comparison icl - {best}"
    elif t["ci_low"] > 0:
        verdict = "agrees: ICL is better than the best RGD system"
    else:
        verdict = "disagrees: ICL is not significantly better than the best RGD system"
    ours = {"best": best, "best_is_validated": bool(systems)}
    if t is not None:
        ours |= {"icl_minus_best_rgd": t["diff"], "p_holm": t["p_holm"]}
    rows.append({"claim": claim, "ours": ours, "ci": None if t is None else [t["ci_low"], t["ci_high"]],
                 "verdict": verdict})
    return rows


def analyse(args, ds, pref, evals: dict, scores: dict, n_params: int, backend: str | None) -> dict:
    """results.json from the stages' outputs: evals (pipeline.evaluate_configs), scores (per generation system,
    metrics.score_generation); n_params: the policy's parameter count (the paper's claims depend on size)."""
    a = args
    weights = a.weights_list
    users = pref.users("test")
    rms = reward_model_entries(evals, weights, a)
    users_of = {q.id: q.user_id for q in ds.splits["test"]}
    config = {**{k: v for k, v in vars(a).items() if k not in ("func",)},
              "backend": backend, "selected_variants": evals["selected"], "policy_parameters": n_params,
              "versions": versions(), "git": git_hash(), "python": platform.python_version(),
              "machine": platform.machine(), "torch_threads": _threads(),
              "policy_accuracy_definition": "DESIGN.md: mean_t log softmax over C_t = top-k U {y_t} of "
                                            "log pi + w r_t(v) / sd; correct iff S(chosen) > S(rejected), ties wrong; "
                                            "r_t(v) per rule: args W_u.h(x o y<t o v) + b_u, token e_v.(P_u^T Q_u h_t), "
                                            "logratio log pi(v|ICL prompt o y<t) - log pi(v|x o y<t); sd = the "
                                            "configuration's reward standard deviation over the train users' candidates",
              "elapsed_s": None}
    results = make_results(config, data_summary(ds, pref), rms, {s: v for s, v in scores.items()})
    results["kendall"] = kendall_section(rms, users, weights, a)
    results["personalization"] = personalization_signal(rms, a)
    results["comparisons"] = paired_comparisons(scores, users_of, a)
    results["rouge_settings"] = ROUGE_SETTINGS
    results["paper"] = paper_beside_us(results, n_params)
    return results


def _threads() -> int:
    import torch

    return torch.get_num_threads()
