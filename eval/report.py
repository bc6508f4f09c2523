"""report.md + rm_vs_policy.png + rouge.png from a results dict (see results.py for the schema)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402

from .io import write_text  # noqa: E402
from .results import validate_results  # noqa: E402


def _f(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _system_order(name: str) -> tuple:
    # Baselines first, then reward-guided systems by method and weight, then best-of-N blocks.
    return ({"zero-shot": 0, "icl": 1}.get(name, 3 if name.startswith("bon-block/") else 2), name)


def data_section(data: dict) -> str:
    keys = ["users", "users_skipped", "queries", "profile_items", "profile_pairs", "query_pairs", "pairs",
            "dropped_empty_rejected", "dropped_rejected_equals_chosen"]
    splits = data["splits"]
    rows = [[k] + [str(splits[s].get(k, "")) for s in splits] for k in keys]
    out = [f"Task {data.get('task', '?')}; rejected responses: {data.get('rejected_source', '?')}.", "",
           _table(["count"] + list(splits), rows)]
    build = data.get("build")
    if build:
        src = build.get("source", {})
        out += ["", "Built from raw per-author records: "
                f"{src.get('records_read', '?')} records read, {src.get('empty_author', '?')} with empty author and "
                f"{src.get('multi_author_or_wire', '?')} multi-author/wire bylines dropped; "
                f"{build.get('authors', '?')} authors, {build.get('authors_skipped_too_few_items', '?')} skipped "
                f"(fewer than {build.get('params', {}).get('min_items', '?')} items), "
                f"{build.get('authors_eligible', '?')} eligible, {sum(build.get('users', {}).values())} sampled."]
    return "\n".join(out)


def rm_section(results: dict) -> str:
    rms = results["reward_models"]
    ws = sorted({w for v in rms.values() for e in v.values() for w in e["policy_accuracy"]}, key=float)
    rows = [[e.get("rule", "args"), m, v, _f(e["rm_accuracy"]), str(e.get("rm_ties", ""))] +
            [_f(e["policy_accuracy"].get(w)) for w in ws]
            for m, variants in rms.items() for v, e in variants.items()]
    k = results["kendall"]
    per_w = k.get("per_w", {})
    krows = [["pooled (w != 0)", _f(k["tau"]), _f(k["p_value"], 4), str(k["n"])]] + \
        [[f"w={w}", _f(t["tau"]), _f(t["p_value"], 4), str(t["n"])] for w, t in per_w.items()] + \
        [[f"rule {r} (w != 0)", _f(t["tau"]), _f(t["p_value"], 4), str(t["n"])]
         for r, t in k.get("per_rule", {}).items()]
    return "\n".join([_table(["rule", "method", "variant", "RM acc", "RM ties"] +
                              [f"policy acc w={w}" for w in ws], rows),
                      "", f"{k['what']}.", "", _table(["points", "tau", "p", "n"], krows)])


def rouge_section(results: dict) -> str:
    gen = results["generation"]
    rows = [[name] + [f"{_f(g[m]['mean'])} [{_f(g[m]['ci_low'])}, {_f(g[m]['ci_high'])}]"
                      for m in ("rouge1", "rougeL")] + [str(g["n"])]
            for name, g in sorted(gen.items(), key=lambda kv: _system_order(kv[0]))]
    settings = results.get("rouge_settings", {})
    note = ", ".join(f"{k}={v}" for k, v in settings.items())
    return "\n".join([_table(["system", "ROUGE-1 [95% CI]", "ROUGE-L [95% CI]", "n"], rows), "",
                      f"F-measure against the user's real output; percentile bootstrap CIs of the mean. "
                      f"Settings: {note}."])


def plot_rm_vs_policy(results: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for method, variants in results["reward_models"].items():
        pts = [(e["rm_accuracy"], a) for e in variants.values() for w, a in e["policy_accuracy"].items()
               if float(w) != 0.0 and e["rm_accuracy"] is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=method, alpha=0.8)
    k = results["kendall"]
    ax.set_title(f"RM accuracy vs policy accuracy (w != 0): Kendall tau-b = {_f(k['tau'])}, "
                 f"p = {_f(k['p_value'], 3)}, n = {k['n']}", fontsize=9)
    ax.set_xlabel("RM accuracy (held-out pairs)")
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
    ax.set_ylabel("F-measure (95% bootstrap CI)")
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
    md = "\n\n".join([
        "# Personalized alignment: does RM accuracy predict reward-guided generation?",
        "## Data", data_section(results["data"]),
        "## Reward models: RM accuracy vs RGD policy accuracy", rm_section(results),
        "![RM accuracy vs policy accuracy](rm_vs_policy.png)",
        "## Generation: ROUGE against the user's real output", rouge_section(results),
        "![ROUGE per system](rouge.png)",
        "## Config", "```\n" + "\n".join(f"{k}: {v}" for k, v in results["config"].items()) + "\n```",
    ]) + "\n"
    write_text(paths[0], md)
    return paths
