"""fp32 vs bf16 on the study: token agreement of greedy outputs and the headline metrics side by side.

    python -m benchmarks.dtype_agreement --reference runs/demo-fp32 --candidate runs/demo [--model demo] [--json PATH]

Both folders are finished `rgd-eval run`s with the same settings except --dtype. Reported:
- greedy agreement: every greedy text both runs' caches hold for the *same input* (the same stage, rule
  settings, weight, prompt and head tensors: the negatives, paraphrases, zero-shot and ICL generations; guided
  systems only where the heads are bitwise equal), the fraction identical token for token and the distribution
  of the first divergence position (in the policy's tokens). Works on an unfinished reference run too;
- headline metrics (both runs finished): each value of the candidate run next to the reference run's value and
  user-clustered 95% CI, and whether it lies inside that CI (the criterion for making the candidate dtype the
  study's default);
- paired ROUGE-1 per system (both runs finished): candidate - reference over the same queries, paired over
  users (the user is the unit: bootstrap CI and sign-flip permutation over users, Holm over the systems), for
  every system name (system, variant and w) both runs generated;
- stage seconds of both runs and their ratio.
Writes JSON and prints Markdown.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

GREEDY_STAGES = ("paraphrases", "negatives", "generation", "generation-guided")  # not bon-block: it samples


def cached_texts(run_dir: Path) -> dict[str, dict[str, str]]:
    """{stage: {input key: text}} from a run's cache; the input key is everything the text depends on except
    the run arguments (stage, rule settings, weight, the row: id, prompt, user, head tensors' hashes)."""
    from rgd_eval.stages import read_record

    out: dict[str, dict[str, str]] = {}
    for stage in GREEDY_STAGES:
        for path in sorted((run_dir / "cache" / stage).glob("*.json")):
            record = read_record(path, "json")
            inputs = record["key"]["inputs"]
            for row in inputs["rows"]:
                key = json.dumps([inputs.get("rule"), inputs.get("w"), row], sort_keys=True)
                out.setdefault(stage, {})[key] = record["value"][row[0]]
    return out


def results_of(run_dir: Path) -> dict | None:
    path = run_dir / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (the shorter length if one is a prefix of the other); None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def agreement(ref: dict[str, str], cand: dict[str, str], encode) -> dict:
    """Texts keyed alike -> identical fraction, n, and first-divergence positions (histogram)."""
    keys = sorted(set(ref) & set(cand))
    firsts = [first_divergence(encode(ref[k]), encode(cand[k])) for k in keys]
    diverged = [f for f in firsts if f is not None]
    return {"n": len(keys), "identical": (len(keys) - len(diverged)) / max(1, len(keys)),
            "first_divergence_hist": dict(sorted(Counter(diverged).items()))}


def _inside(value: float, ci: dict) -> bool:
    return ci["ci_low"] <= value <= ci["ci_high"]


def metric_rows(ref: dict, cand: dict) -> list[dict]:
    """Headline metrics: ROUGE-1 / ROUGE-L of every system, RM accuracy and validated-w policy accuracy of every
    selected reward-model variant; each with the reference's CI and whether the candidate lies inside it."""
    rows = []
    for system, g in sorted(ref["generation"].items()):
        if system not in cand["generation"]:
            continue
        for metric in ("rouge1", "rougeL"):
            r, c = g[metric], cand["generation"][system][metric]
            rows.append({"what": f"{metric} {system}", "reference": r["mean"], "ci": [r["ci_low"], r["ci_high"]],
                         "candidate": c["mean"], "inside": _inside(c["mean"], r)})
    for method, variants in sorted(ref["reward_models"].items()):
        for variant, e in variants.items():
            ce = cand["reward_models"].get(method, {}).get(variant)
            if not e["selected"] or ce is None:
                continue
            ci = e["rm_accuracy_ci"]
            rows.append({"what": f"RM accuracy {method}/{variant}", "reference": e["rm_accuracy"],
                         "ci": [ci["ci_low"], ci["ci_high"]], "candidate": ce["rm_accuracy"],
                         "inside": _inside(ce["rm_accuracy"], ci)})
            p, cp = e["policy_accuracy_at_validated_w"], ce["policy_accuracy_at_validated_w"]
            rows.append({"what": f"policy accuracy {method}/{variant} (validated w {e['validated_w']:g} / "
                                 f"{ce['validated_w']:g})", "reference": p["mean"], "ci": [p["ci_low"], p["ci_high"]],
                         "candidate": cp["mean"], "inside": _inside(cp["mean"], p)})
    return rows


def samples_of(run_dir: Path) -> dict[tuple[str, str], dict]:
    """{(system, query id): sample} from a finished run's samples.jsonl."""
    with open(run_dir / "samples.jsonl") as f:
        return {(r["system"], r["id"]): r for r in map(json.loads, f)}


def paired_rouge1(ref_dir: Path, cand_dir: Path) -> dict:
    """Per system both runs generated: ROUGE-1 of candidate - reference on the same queries, paired over users."""
    from rgd_eval.stats import holm, lamp_rouge, paired_user_difference

    ref, cand = samples_of(ref_dir), samples_of(cand_dir)
    out = {}
    for system in sorted({s for s, _ in ref} & {s for s, _ in cand}):
        keys = sorted(k for k in ref if k[0] == system and k in cand)
        for k in keys:
            if ref[k]["gold"] != cand[k]["gold"] or ref[k]["user"] != cand[k]["user"]:
                raise ValueError(f"{ref_dir} and {cand_dir} disagree on query {k[1]!r} (its user or gold text)")
        gold = [ref[k]["gold"] for k in keys]
        r = lamp_rouge([ref[k]["prediction"] for k in keys], gold)["rouge1"]
        c = lamp_rouge([cand[k]["prediction"] for k in keys], gold)["rouge1"]
        out[system] = {"reference": sum(r) / len(r), "candidate": sum(c) / len(c),
                       **paired_user_difference(c, r, [ref[k]["user"] for k in keys], n_boot=1000, n_perm=5000)}
    for system, p in holm({s: v["p_value"] for s, v in out.items()}).items():
        out[system]["holm_p"] = p
    return out


def compare(ref_dir: Path, cand_dir: Path, model: str) -> dict:
    from transformers import AutoTokenizer

    from rgd_engine.models import get_preset, preset_model_dir

    tok = AutoTokenizer.from_pretrained(str(preset_model_dir(model) if get_preset(model) else model))

    def encode(text: str) -> list[int]:
        return tok(" " + text, add_special_tokens=False)["input_ids"]

    ref_texts, cand_texts = cached_texts(ref_dir), cached_texts(cand_dir)
    greedy = {stage: agreement(ref_texts[stage], cand_texts[stage], encode)
              for stage in GREEDY_STAGES if stage in ref_texts and stage in cand_texts}
    out = {"reference": str(ref_dir), "candidate": str(cand_dir), "model": model, "greedy_agreement": greedy,
           "metrics": [], "stage_seconds": {}}
    ref, cand = results_of(ref_dir), results_of(cand_dir)
    if ref is None or cand is None:
        return out
    rows = metric_rows(ref, cand)
    rs, cs = ref["config"]["stage_seconds"], cand["config"]["stage_seconds"]
    out.update(dtypes=[ref["config"]["dtype"], cand["config"]["dtype"]],
               elapsed_s=[ref["config"].get("elapsed_s"), cand["config"].get("elapsed_s")], metrics=rows,
               inside_all=all(r["inside"] for r in rows), n_outside=sum(not r["inside"] for r in rows),
               paired_rouge1=paired_rouge1(ref_dir, cand_dir),
               stage_seconds={k: {"reference_s": rs[k], "candidate_s": cs.get(k),
                                  "speedup": rs[k] / cs[k] if cs.get(k) else None} for k in rs})
    return out


def markdown(out: dict) -> str:
    lines = ["Greedy agreement (candidate vs reference, same inputs): identical texts, first divergence "
             "(token index: count)", "", "| texts | n | identical | first divergence |", "|---|---|---|---|"]
    for name, g in out["greedy_agreement"].items():
        hist = ", ".join(f"{k}: {v}" for k, v in g["first_divergence_hist"].items()) or "-"
        lines.append(f"| {name} | {g['n']} | {g['identical']:.3f} | {hist} |")
    if out["metrics"]:
        a, b = out["dtypes"]
        lines += ["", f"Headline metrics: {b} vs {a} and {a}'s user-clustered 95% CI "
                      f"({out['n_outside']} of {len(out['metrics'])} outside)", "",
                  f"| metric | {a} | {a} CI | {b} | inside |", "|---|---|---|---|---|"]
        for r in out["metrics"]:
            lines.append(f"| {r['what']} | {r['reference']:.3f} | [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | "
                         f"{r['candidate']:.3f} | {'yes' if r['inside'] else '**no**'} |")
        lines += ["", f"ROUGE-1, {b} - {a} on the same queries, paired over users (Holm over the systems)", "",
                  f"| system | {b} | {a} | {b} - {a} [95% CI] | p | Holm p |", "|---|---|---|---|---|---|"]
        for system, d in out["paired_rouge1"].items():
            lines.append(f"| {system} | {d['candidate']:.3f} | {d['reference']:.3f} | {d['diff']:+.4f} "
                         f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] | {d['p_value']:.2g} | {d['holm_p']:.2g} |")
        lines += ["", f"| stage | {a} s | {b} s | speed-up |", "|---|---|---|---|"]
        for k, st in out["stage_seconds"].items():
            sp = f"{st['speedup']:.2f}x" if st["speedup"] else "-"
            lines.append(f"| {k} | {st['reference_s']:.0f} | {st['candidate_s'] or 0:.0f} | {sp} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dtype_agreement", description=__doc__.split("\n")[0])
    p.add_argument("--reference", type=Path, required=True, help="run folder of the reference dtype (fp32)")
    p.add_argument("--candidate", type=Path, required=True, help="run folder of the candidate dtype (bf16)")
    p.add_argument("--model", default="demo", help="the runs' policy (its tokenizer counts divergence positions)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    out = compare(args.reference, args.candidate, args.model)
    if args.json:
        from rgd_engine.atomic import atomic_write

        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.json, lambda f: json.dump(out, f, indent=1))
    print(markdown(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
