"""bf16 against fp32 decode speed, interleaved in one process: the targets "engine-greedy bf16 >= 2x engine-greedy fp32"
and ">= 2.5x hf-greedy fp32" (B = 1), with the arms alternating round by round.

    python -m benchmarks.dtype_ratio [--model demo] [--rounds 6] [--prompt-len 256] [--new-tokens 64] [--repeats 3]
                                     [--json PATH]

Why: on a shared VM the read bandwidth moves by 1.5x within minutes (decode_harness.read_bandwidth_samples), so two
separate benchmark runs, one per dtype, compare the machine's moods as much as the dtypes. Here every round times each
arm back to back (the order reversed every other round), each ratio is taken within its round, and the report gives
every round's ratios with their median and range over rounds; a target passes when the median does.
Arms: engine-greedy float32, engine-greedy bfloat16, hf-greedy float32. Per arm and round: the median of --repeats
calls of --new-tokens tokens (tokens/s, prefill included, as decode.py's headline) and of 1-token calls (decode-only
tokens/s = (N - 1) / (t_N - t_1), as decode.py). Rows run to the token budget (EOS ignored).
Writes JSON (config, rounds, summary) and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.decode import _git, machine_info
from benchmarks.decode_harness import Run, build_prompts, timed
from benchmarks.decode_modes import engine_call

REPO = Path(__file__).resolve().parents[1]
ARMS = ("engine-greedy float32", "engine-greedy bfloat16", "hf-greedy float32")
# (name, numerator arm, denominator arm, target): on tokens/s, prefill included
TARGETS = (("bf16_vs_fp32", "engine-greedy bfloat16", "engine-greedy float32", 2.0),
           ("bf16_vs_hf_fp32", "engine-greedy bfloat16", "hf-greedy float32", 2.5))


def hf_greedy(engine, prompt: list[int]):
    """call(n) -> Run of HF generate (greedy, n tokens exactly)."""
    ids = torch.tensor([prompt])
    model, pad = engine.policy.hf_model, engine.tokenizer.pad_token_id

    @torch.inference_mode()
    def call(n: int):
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=pad)
        return Run([out[0, ids.shape[1]:].tolist()], None)

    return call


def time_arm(call, new_tokens: int, repeats: int) -> dict:
    cpu = torch.device("cpu")
    full = float(np.median([timed(call, new_tokens, cpu) for _ in range(repeats)]))
    first = float(np.median([timed(call, 1, cpu) for _ in range(repeats)]))
    return {"tokens_per_s": new_tokens / full,
            "decode_tokens_per_s": (new_tokens - 1) / (full - first) if full > first else None,
            "seconds_full": full, "seconds_first": first}


def summarize(rounds: list[dict]) -> dict:
    """Per target: each round's ratio (tokens/s and decode-only), their median, min and max, and pass/fail on the
    median."""
    out = {}
    for name, num, den, target in TARGETS:
        for field in ("tokens_per_s", "decode_tokens_per_s"):
            ratios = [r[num][field] / r[den][field] for r in rounds if r[num][field] and r[den][field]]
            key = name if field == "tokens_per_s" else f"{name}_decode_only"
            out[key] = {"ratios": ratios, "median": float(np.median(ratios)), "min": min(ratios), "max": max(ratios),
                        "target": target, "passes": float(np.median(ratios)) >= target}
    return out


def markdown(rounds: list[dict], summary: dict) -> str:
    lines = ["| round | " + " | ".join(f"{a} tok/s (decode only)" for a in ARMS) + " | bf16 / fp32 | bf16 / hf fp32 |",
             "|---" * (len(ARMS) + 3) + "|"]
    for i, r in enumerate(rounds):
        cells = [f"{r[a]['tokens_per_s']:.2f} ({r[a]['decode_tokens_per_s'] or float('nan'):.2f})" for a in ARMS]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + f" | {summary['bf16_vs_fp32']['ratios'][i]:.2f}x | "
                     f"{summary['bf16_vs_hf_fp32']['ratios'][i]:.2f}x |")
    lines.append("")
    for key, s in summary.items():
        lines.append(f"{key}: median {s['median']:.2f}x (range {s['min']:.2f} - {s['max']:.2f}) against "
                     f"{s['target']}x: {'pass' if s['passes'] else 'FAIL'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "dtype_ratio.json")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.repeats < 1 or args.new_tokens < 2:
        p.error("--rounds and --repeats must be >= 1 and --new-tokens >= 2")

    from rgd_engine import Engine, EngineConfig
    from rgd_engine.atomic import atomic_write

    engines = {dt: Engine.from_config(EngineConfig(model=args.model, dtype=dt)) for dt in ("float32", "bfloat16")}
    prompt = build_prompts(engines["float32"].tokenizer, 1, args.prompt_len)[0]
    calls = {"engine-greedy float32": engine_call(engines["float32"], [prompt]),
             "engine-greedy bfloat16": engine_call(engines["bfloat16"], [prompt]),
             "hf-greedy float32": hf_greedy(engines["float32"], prompt)}
    for arm, call in calls.items():  # warm-up, and every arm runs to the budget
        n = len(call(args.new_tokens).tokens[0])
        if n != args.new_tokens:
            raise RuntimeError(f"{arm}: expected {args.new_tokens} tokens, got {n}")
    rounds = []
    for i in tqdm(range(args.rounds), desc="rounds"):
        order = ARMS if i % 2 == 0 else ARMS[::-1]
        rounds.append({arm: time_arm(calls[arm], args.new_tokens, args.repeats) for arm in order})
    summary = summarize(rounds)
    report = {"config": {"params": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                         "machine": machine_info(torch.device("cpu")), "torch": torch.__version__,
                         "threads": torch.get_num_threads(), "git_hash": _git("rev-parse", "HEAD"),
                         "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
                         "command": "python -m benchmarks.dtype_ratio " + shlex.join(argv)},
              "rounds": rounds, "summary": summary}
    table = markdown(rounds, summary)
    print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.json, lambda f: f.write(json.dumps(report, indent=1) + "\n"))
    atomic_write(args.json.with_suffix(".md"), lambda f: f.write(table + "\n"))
    return report


if __name__ == "__main__":
    main()
