"""report.md + rm_vs_policy.png + rouge.png from a results dict (see results.py for the schema)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402

from .io import write_text  # noqa: E402
from .results import validate_results  # noqa: E402

NEGATIVES = {
    "icl-other": "content-matched: the policy's output for the same input conditioned on another user's profile. "
                 "Chosen and rejected share the content and differ in whose style they carry, so RM accuracy above "
                 "the `global` head's measures personalization; it cannot show how the user's own text compares "
                 "with unconditioned model text.",
    "policy": "the base policy's own greedy output: pairs measure 'human vs this model', not 'this user vs others'; "
              "every rejected token is the policy's argmax, so policy accuracy at w = 0 is 0 by construction.",
    "other-user": "another user's real text for another article: pairs differ in topic as well as style, so they "
                  "are separable by content alone.",
}


def fmt_number(x, digits: int = 3) -> str:
    """A number with `digits` decimals, or "n/a" for None (every table of the reports)."""
    return "n/a" if x is None else f"{x:.{digits}f}"


def _ci(d: dict | None, digits: int = 3) -> str:
    if not d:
        return "n/a"
    mean = d.get("mean", d.get("diff", d.get("tau")))
    return f"{fmt_number(mean, digits)} [{fmt_number(d.get('ci_low'), digits)}, {fmt_number(d.get('ci_high'), digits)}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _system_order(name: str) -> tuple:
    # Baselines first, then reward-guided systems by method and weight, then best-of-N blocks.
    return ({"zero-shot": 0, "icl": 1}.get(name, 3 if name.startswith("bon-block/") else 2), name)


def data_section(data: dict) -> str:
    keys = ["users", "users_skipped", "queries", "profile_items", "profile_pairs", "query_pairs", "pairs",
            "dropped_empty_rejected", "dropped_rejected_equals_chosen", "dropped_empty_paraphrase"]
    splits = data["splits"]
    rows = [[k] + [str(splits[s].get(k, "")) for s in splits] for k in keys]
    src = data.get("rejected_source", "?")
    out = [f"Task {data.get('task', '?')}; rejected responses: **{src}**. What each source (`--rejected`) can and "
           "cannot show:", ""] + [f"- `{name}`{' (this run)' if name == src else ''}: {text}"
                                  for name, text in NEGATIVES.items()] + ["", _table(["count"] + list(splits), rows)]
    build = data.get("build")
    if build:
        s = build.get("source", {})
        out += ["", "Built from raw per-author records: "
                f"{s.get('records_read', '?')} records read, {s.get('empty_author', '?')} with empty author and "
                f"{s.get('multi_author_or_wire', '?')} multi-author/wire bylines dropped; "
                f"{build.get('authors', '?')} authors, {build.get('authors_skipped_too_few_items', '?')} skipped "
                f"(fewer than {build.get('params', {}).get('min_items', '?')} items), "
                f"{build.get('authors_eligible', '?')} eligible, {sum(build.get('users', {}).values())} used."]
    return "\n".join(out)


def rm_section(results: dict) -> str:
    rms = results["reward_models"]
    ws = sorted({w for v in rms.values() for e in v.values() for w in e["policy_accuracy"]}, key=float)
    rows = [[e["rule"], m, v + (" (selected)" if e["selected"] else ""), _ci(e.get("rm_accuracy_ci")),
             fmt_number(e.get("rm_accuracy_validation")), fmt_number(e.get("reward_scale"), 3), f"{e['validated_w']:g}",
             _ci(e.get("policy_accuracy_at_validated_w"))] + [fmt_number(e["policy_accuracy"].get(w)) for w in ws]
            for m, variants in rms.items() for v, e in variants.items()]
    return "\n".join([
        _table(["rule", "method", "variant", "RM acc (test) [95% CI]", "RM acc (validation)", "reward sd",
                "validated w", "policy acc at validated w [95% CI]"] + [f"policy acc w={w}" for w in ws], rows), "",
        "Selected variant: best RM accuracy on the train users' held-out pairs; validated w: best policy accuracy "
        "there. w is in units of the configuration's reward standard deviation over the train candidates. "
        "CIs resample test users."])


def personalization_section(results: dict) -> str:
    rows = [[m, d["minus"], _ci(d), fmt_number(d.get("p_value"), 4), str(d.get("n_users"))]
            for m, d in results["personalization"].items()]
    if not rows:
        return "No personalized method next to its global baseline in this run."
    signal = any(d.get("ci_low") is not None and d["ci_low"] > 0 for d in results["personalization"].values())
    verdict = ("At least one personalized method ranks the pairs better than the shared head (CI above 0): the pairs "
               "carry a personalization signal." if signal else
               "No personalized method ranks the pairs reliably better than the shared head (every CI includes 0 or "
               "lies below it): these pairs do not measure personalization, and a low tau below says little about "
               "personalization.")
    return "\n".join([_table(["method", "minus", "RM acc difference [95% CI]", "p (sign-flip)", "users"], rows),
                      "", verdict])


def _reliability(r: dict) -> str:
    """Spearman-Brown split-half reliability; "none" with the raw r where the halves do not correlate (r <= 0)."""
    if r.get("r_spearman_brown") is None and r.get("r_mean") is not None:
        return f"none (r = {r['r_mean']:.2f})"
    return fmt_number(r.get("r_spearman_brown"))


def kendall_section(results: dict) -> str:
    k = results["kendall"]

    def row(label, t):
        if not t:
            return [label] + ["n/a"] * 7
        rel = t.get("reliability", {})
        return [label, _ci(t), fmt_number(t.get("p_value"), 4), fmt_number(t.get("p_value_permutation"), 4),
                str(t.get("n_points")), str(t.get("n_users")), _reliability(rel.get("rm_accuracy", {})),
                _reliability(rel.get("policy_accuracy", {}))]

    rows = [row(f"w = {w}", t) for w, t in k["per_w"].items()] + [row("validated w", k.get("validated"))] + \
        [row(f"rule {r}, validated w", t) for r, t in k.get("per_rule", {}).items()]
    pooled = k.get("pooled") or {}
    return "\n".join([
        _table(["points", "tau-b [95% user-bootstrap CI]", "p (scipy)", "p (permutation)", "configurations", "users",
                "reliability RM acc", "reliability policy acc"], rows), "", f"{k['what']}.", "",
        f"Secondary, pooled over every w > 0: tau = {fmt_number(pooled.get('tau'))}, "
        f"p = {fmt_number(pooled.get('p_value'), 4)}, "
        f"n = {pooled.get('n')} ({pooled.get('dependence', '')})."])


def rouge_section(results: dict) -> str:
    gen = results["generation"]
    rows = [[name] + [_ci(g[m]) for m in ("rouge1", "rougeL", "rouge1_stemmed", "rougeL_stemmed")] + [str(g["n"])]
            for name, g in sorted(gen.items(), key=lambda kv: _system_order(kv[0]))]
    comp = results["comparisons"]
    crow = [[name, _ci(t), fmt_number(t.get("p_value"), 4), fmt_number(t.get("p_holm"), 4), str(t.get("n_users"))]
            for name, t in comp["tests"].items()]
    return "\n".join([
        _table(["system", "ROUGE-1 [95% CI]", "ROUGE-L [95% CI]", "ROUGE-1 stemmed", "ROUGE-L stemmed", "n"], rows),
        "", "ROUGE as LaMP computes it (no stemming; stemmed columns secondary); CIs resample test users. Settings: "
        + "; ".join(f"{k}: {v}" for k, v in results.get("rouge_settings", {}).items()) + ".", "",
        f"Paired differences of {comp['metric']} over users (sign-flip permutation; Holm over the {comp['family']} "
        "tests):", "", _table(["difference", "mean [95% CI]", "p", "p (Holm)", "users"], crow)])


def paper_section(results: dict) -> str:
    def ours(o):
        if isinstance(o, dict):
            return "; ".join(f"{k} {fmt_number(v) if isinstance(v, float) else v}" for k, v in o.items())
        return fmt_number(o) if isinstance(o, float) else str(o)

    rows = [[r["claim"], ours(r["ours"]),
             (f"[{fmt_number(r['ci'][0])}, {fmt_number(r['ci'][1])}]" if isinstance(r.get("ci"), list)
              else str(r.get("ci"))),
             r["verdict"]] for r in results["paper"]]
    return "\n".join([_table(["claim of the motivating study", "ours", "95% CI", "verdict"], rows), "",
                      "Rows 2 and 3 pick systems by their test-set numbers (largest RM-accuracy gap, best ROUGE-1): "
                      "those selections are oracle choices, labelled as such."])


def plot_rm_vs_policy(results: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for method, variants in results["reward_models"].items():
        pts = [(e["rm_accuracy"], e["policy_accuracy_at_validated_w"]["mean"]) for e in variants.values()
               if e["rm_accuracy"] is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=method, alpha=0.8)
    k = results["kendall"].get("validated") or {}
    ax.set_title(f"RM accuracy vs policy accuracy at the validated w\ntau-b = {fmt_number(k.get('tau'))} "
                 f"[{fmt_number(k.get('ci_low'))}, {fmt_number(k.get('ci_high'))}], "
                 f"{k.get('n_points')} configurations, "
                 f"{k.get('n_users')} users", fontsize=9)
    ax.set_xlabel("RM accuracy (test users' held-out pairs)")
    ax.set_ylabel("policy accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_rouge(results: dict, path: Path) -> None:
    items = sorted(results["generation"].items(), key=lambda kv: _system_order(kv[0]))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(items) + 2), 4.5))
    width = 0.4
    for j, metric in enumerate(("rouge1", "rougeL")):
        xs = [i + (j - 0.5) * width for i in range(len(items))]
        means = [g[metric]["mean"] for _, g in items]
        err = [[m - g[metric]["ci_low"] for m, (_, g) in zip(means, items)],
               [g[metric]["ci_high"] - m for m, (_, g) in zip(means, items)]]
        ax.bar(xs, means, width, yerr=err, capsize=3, label={"rouge1": "ROUGE-1", "rougeL": "ROUGE-L"}[metric])
    ax.set_xticks(range(len(items)))
    ax.set_xticklabels([n for n, _ in items], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("LaMP ROUGE F1 (95% CI, users resampled)", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results: dict, run_dir: str | Path) -> list[Path]:
    """Write report.md, rm_vs_policy.png and rouge.png into run_dir; returns their paths."""
    validate_results(results)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = [run_dir / "report.md", run_dir / "rm_vs_policy.png", run_dir / "rouge.png"]
    # Plots go to temp names and are renamed, like the JSON/text writes, so a crash leaves no half file.
    for plot, path in ((plot_rm_vs_policy, paths[1]), (plot_rouge, paths[2])):
        tmp = path.with_name(f".{path.stem}.tmp.png")
        plot(results, tmp)
        tmp.replace(path)
    config = {k: v for k, v in results["config"].items() if k not in ("selected_variants",)}
    md = "\n\n".join([
        "# Personalized alignment: does RM accuracy predict reward-guided generation?",
        "## Data", data_section(results["data"]),
        "## Reward models: RM accuracy and RGD policy accuracy", rm_section(results),
        "## Personalization signal: each method's RM accuracy minus the shared head's", personalization_section(results),
        "## Kendall tau: does RM accuracy predict policy accuracy?", kendall_section(results),
        "![RM accuracy vs policy accuracy](rm_vs_policy.png)",
        "## Generation: ROUGE against the user's real output", rouge_section(results),
        "![ROUGE per system](rouge.png)",
        "## The paper beside us", paper_section(results),
        "## Config", "```\n" + "\n".join(f"{k}: {v}" for k, v in config.items()) + "\n```",
    ]) + "\n"
    write_text(paths[0], md)
    return paths
