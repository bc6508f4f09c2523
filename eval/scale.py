"""The scale report of a sweep: one row per configuration (policy, optional reward backbone) read from its run's
results.json, written as scale.json, scale.md and scale.png (the ICL lead vs parameter count).

Every figure is the run's own statistic, not re-estimated here: ICL minus the best validated RGD system and ICL
minus zero-shot are the run's paired comparisons (per-user mean differences, CIs resampling users, Holm-adjusted
p over the run's family); Kendall tau per w and at the validated w with its user-bootstrap CI; the ranges of RM
accuracy and of policy accuracy at the validated w over the run's configurations (every method x variant).
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402

from .io import write_json, write_text  # noqa: E402
from .report import fmt_number  # noqa: E402

PAPER_MIN_PARAMS = 3e9
PAPER_LEAD_7B = (0.03, 0.05)  # the motivating study: ICL ahead of every RGD method by +3 - 5 ROUGE-1 at 7B


def _test(tests: dict, name: str) -> dict | None:
    t = tests.get(name)
    if t is None:
        return None
    return {k: t.get(k) for k in ("diff", "ci_low", "ci_high", "p_value", "p_holm", "n_users")}


def _range(values: list[float]) -> list[float] | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return [min(values), max(values)] if values else None


def scale_row(label: str, results: dict, meta: dict | None = None) -> dict:
    """One configuration's row from its results.json (and the sweep's wall time / peak RSS for it)."""
    cfg, gen, tests = results["config"], results["generation"], results["comparisons"]["tests"]
    paper = next((r for r in results["paper"] if r["claim"].startswith("ICL beats every RGD")), None)
    best = (paper or {}).get("ours") or {}
    rms = [e for variants in results["reward_models"].values() for e in variants.values()]
    kendall = results["kendall"]
    val = kendall.get("validated") or {}
    return {
        "label": label,
        "model": cfg["model"],
        "reward_model": cfg.get("reward_model"),
        "parameters": cfg["policy_parameters"],
        "dtype": cfg["dtype"],
        "test_users": results["data"]["splits"]["test"]["users"],
        "icl_rouge1": gen["icl"]["rouge1"]["mean"] if "icl" in gen else None,
        "zero_shot_rouge1": gen["zero-shot"]["rouge1"]["mean"] if "zero-shot" in gen else None,
        "best_rgd": best.get("best"),
        "best_rgd_is_validated": best.get("best_is_validated"),
        "best_rgd_rouge1": gen[best["best"]]["rouge1"]["mean"] if best.get("best") in gen else None,
        "icl_minus_best_rgd": _test(tests, f"icl - {best['best']}") if best.get("best") else None,
        "icl_minus_zero_shot": _test(tests, "icl - zero-shot"),
        "kendall_tau_per_w": {w: k.get("tau") for w, k in kendall.get("per_w", {}).items()},
        "kendall_tau_validated": {k: val.get(k) for k in ("tau", "ci_low", "ci_high", "n_points", "n_users")},
        "rm_accuracy_range": _range([e["rm_accuracy"] for e in rms]),
        "policy_accuracy_range": _range([(e.get("policy_accuracy_at_validated_w") or {}).get("mean") for e in rms]),
        "paper_verdict": (paper or {}).get("verdict"),
        "elapsed_s": cfg.get("elapsed_s"),
        **({"sweep": meta} if meta else {}),
    }


def reading(rows: list[dict], notes: dict[str, str]) -> list[str]:
    """What the ladder does and does not show against the motivating study's >= 3B claim, from the rows."""
    done = sorted((r for r in rows if r.get("icl_minus_best_rgd")), key=lambda r: r["parameters"])
    out = []
    if not done:
        return ["No configuration produced an ICL - best RGD comparison."]
    largest = done[-1]["parameters"]
    out.append(f"The ladder stops at {largest / 1e9:.2f}B parameters: the motivating study's claim is for models "
               f">= {PAPER_MIN_PARAMS / 1e9:.0f}B, so no row tests it; the rows show the trend below that size.")
    leads = [(r["label"], r["icl_minus_best_rgd"]) for r in done]
    sig = [lab for lab, t in leads if t["ci_low"] is not None and t["ci_low"] > 0]
    neg = [lab for lab, t in leads if t["ci_high"] is not None and t["ci_high"] < 0]
    out.append(f"ICL's lead over the best RGD system has a 95% CI above 0 for {len(sig)} of {len(leads)} "
               f"configurations ({', '.join(sig) or 'none'}) and below 0 for {len(neg)} ({', '.join(neg) or 'none'}).")
    policies = [r for r in done if not r.get("reward_model")]
    if len(policies) >= 2:
        a, b = policies[0], policies[-1]
        da, db = a["icl_minus_best_rgd"]["diff"], b["icl_minus_best_rgd"]["diff"]
        out.append(f"From the smallest ({a['label']}, {da:+.3f}) to the largest policy ({b['label']}, {db:+.3f}) the "
                   f"lead changes by {db - da:+.3f} ROUGE-1. With {len(policies)} models (one point each, "
                   "different families and tunings) no trend test is meaningful: read it as a description, not as "
                   "evidence of a scaling law.")
    few = [r["label"] for r in done if r["test_users"] < 20]
    if few:
        out.append(f"Runs on fewer than 20 test users ({', '.join(few)}): their CIs are wide and their verdicts weak.")
    n_min = min(r["test_users"] for r in done)
    if 2 / 2 ** n_min > 0.05:
        out.append(f"With {n_min} test users a sign-flip test over users cannot give a two-sided p below "
                   f"2 / 2^{n_min} = {2 / 2 ** n_min:.3f}: no comparison of such a run can be significant, whatever "
                   "its effect.")
    out += [f"{label}: {text}" for label, text in notes.items()]
    out.append("The best RGD system of each row is the validated system with the highest test ROUGE-1 (a test-data "
               "selection that favours RGD), so a positive ICL lead is conservative.")
    return out


def _fmt_test(t: dict | None) -> str:
    if not t:
        return "n/a"
    return (f"{t['diff']:+.3f} [{fmt_number(t['ci_low'])}, {fmt_number(t['ci_high'])}] "
            f"p_holm {fmt_number(t.get('p_holm'))}")


def _fmt_range(r) -> str:
    return "n/a" if not r else f"{r[0]:.3f} - {r[1]:.3f}"


def markdown(rows: list[dict], failed: list[dict], lines: list[str], command: str | None) -> str:
    weights = sorted({w for r in rows for w in r["kendall_tau_per_w"]}, key=float)
    head = ["configuration", "params", "test users", "ICL R-1", "best RGD (R-1)", "ICL - best RGD [95% CI]",
            "ICL - zero-shot [95% CI]", "tau at validated w [95% CI]"] + [f"tau w={w}" for w in weights] + \
           ["RM acc range", "policy acc range", "wall", "peak RSS"]
    table = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        kv = r["kendall_tau_validated"]
        sw = r.get("sweep") or {}
        cells = [r["label"], f"{r['parameters'] / 1e6:.0f}M", str(r["test_users"]), fmt_number(r["icl_rouge1"]),
                 f"{r['best_rgd']} ({fmt_number(r['best_rgd_rouge1'])})", _fmt_test(r["icl_minus_best_rgd"]),
                 _fmt_test(r["icl_minus_zero_shot"]),
                 f"{fmt_number(kv.get('tau'))} [{fmt_number(kv.get('ci_low'))}, {fmt_number(kv.get('ci_high'))}]"] + \
                [fmt_number(r["kendall_tau_per_w"].get(w)) for w in weights] + \
                [_fmt_range(r["rm_accuracy_range"]), _fmt_range(r["policy_accuracy_range"]),
                 "n/a" if sw.get("wall_s") is None else f"{sw['wall_s'] / 60:.1f} min",
                 "n/a" if sw.get("peak_rss_mb") is None else f"{sw['peak_rss_mb'] / 1024:.1f} GiB"]
        table.append("| " + " | ".join(cells) + " |")
    parts = ["# Scale report: ICL vs reward-guided decoding across model sizes", "\n".join(table),
             "ROUGE-1 is LaMP's F1 against the user's real output. Differences are per-user means (ICL minus the "
             "other system), CIs resample users, p is the run's sign-flip permutation test Holm-adjusted over its "
             "family. tau: Kendall tau-b of RM accuracy vs policy accuracy across the run's configurations. Wall "
             "time and peak RSS are the whole `rgd-eval run` process (a resumed run reports its resumed time).",
             "![ICL lead vs parameters](scale.png)", "## Reading", "\n".join(f"- {x}" for x in lines)]
    if failed:
        parts += ["## Failed configurations", "\n".join(f"- {f['label']}: {f['error']}" for f in failed)]
    if command:
        parts += ["## Command", f"```\n{command}\n```"]
    return "\n\n".join(parts) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """ICL - best RGD and ICL - zero-shot (95% CIs) against the policy's parameter count (log axis)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for key, name, marker, dx in (("icl_minus_best_rgd", "ICL - best validated RGD", "o", 0.97),
                                  ("icl_minus_zero_shot", "ICL - zero-shot", "s", 1.03)):
        pts = [r for r in rows if r.get(key)]
        if not pts:
            continue
        xs = [r["parameters"] * dx * (1.15 if r.get("reward_model") else 1.0) for r in pts]  # pairs beside
        ys = [r[key]["diff"] for r in pts]
        err = [[y - (r[key]["ci_low"] if r[key]["ci_low"] is not None else y) for y, r in zip(ys, pts)],
               [(r[key]["ci_high"] if r[key]["ci_high"] is not None else y) - y for y, r in zip(ys, pts)]]
        ax.errorbar(xs, ys, yerr=err, fmt=marker, capsize=3, label=name)
        if key == "icl_minus_best_rgd":
            for x, y, r in zip(xs, ys, pts):
                ax.annotate(r["label"], (x, y), textcoords="offset points", fontsize=7,
                            xytext=(5, -12) if r.get("reward_model") else (5, 5))
    ax.errorbar([7e9], [sum(PAPER_LEAD_7B) / 2], yerr=[[0.01], [0.01]], fmt="D", color="grey", capsize=3,
                label="motivating study at 7B (+3 - 5 ROUGE-1)")
    ax.axhline(0, color="black", lw=0.8)
    ax.axvspan(PAPER_MIN_PARAMS, 1e10, color="grey", alpha=0.1)
    ax.set_xscale("log")
    ax.set_xlabel("policy parameters")
    ax.set_ylabel("ROUGE-1 difference (95% CI, users resampled)")
    ax.set_title("ICL lead vs model size (shaded: >= 3B, where the claim is made)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_scale_report(out_dir: str | Path, rows: list[dict], failed: list[dict], notes: dict[str, str],
                       command: str | None = None) -> list[Path]:
    """scale.json, scale.md and scale.png in out_dir (each written atomically); returns their paths."""
    out_dir = Path(out_dir)
    lines = reading(rows, notes)
    paths = [out_dir / "scale.json", out_dir / "scale.md", out_dir / "scale.png"]
    write_json(paths[0], {"rows": rows, "failed": failed, "reading": lines, "command": command})
    write_text(paths[1], markdown(rows, failed, lines, command))
    tmp = paths[2].with_name(".scale.tmp.png")
    plot(rows, tmp)
    tmp.replace(paths[2])
    return paths
