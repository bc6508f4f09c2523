"""Everything `rgd-eval run` writes into its run folder (atomically): results.json, samples.jsonl, pairs.jsonl,
LaMP-format predictions per system, report.md and plots."""
from __future__ import annotations

import json
from pathlib import Path

from .io import write_json, write_text
from .report import write_report
from .results import validate_results


def write_outputs(run_dir: Path, results: dict, pref, prompts: dict, systems: dict, golds: dict, users_of: dict,
                  conds: dict | None, scores: dict) -> list[Path]:
    validate_results(results)
    write_json(run_dir / "results.json", results)
    write_text(run_dir / "samples.jsonl", "".join(
        json.dumps({"system": s, "id": i, "user": users_of[i], "prompt": v["prompts"][i],
                    "prediction": v["predictions"][i], "gold": golds[i], **scores[s]["per_example"][i]}) + "\n"
        for s, v in systems.items() for i in sorted(golds)))
    write_text(run_dir / "pairs.jsonl", "".join(
        json.dumps({"pair_id": p.pair_id, "user": p.user_id, "split": p.split, "kind": p.kind,
                    "prompt": prompts[p.pair_id], "chosen": p.chosen, "rejected": p.rejected,
                    "negative_user": p.negative_user,
                    **({"cond_prompt": conds[p.pair_id]} if conds and p.pair_id in conds else {})}) + "\n"
        for p in pref.pairs))
    lamp_task = results["data"]["task"].replace("-", "_")
    for s, v in systems.items():
        write_json(run_dir / "predictions" / (s.replace("/", "_") + ".json"),
                   {"task": lamp_task, "golds": [{"id": i, "output": v["predictions"][i]} for i in sorted(golds)]})
    return [run_dir / "results.json", *write_report(results, run_dir)]
