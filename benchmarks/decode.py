"""Decode throughput: the engine (plain and reward-guided) against HF generate and published-style ARGS codes.

    python -m benchmarks.decode [--modes ...] [--json PATH] [--device cpu|cuda] [--model demo] [--scaling] ...

Every mode runs on the same model, prompts and settings, in one process. Per mode: one untimed check call
(output length, tokens, KV bytes, peak memory), `--warmup - 1` more untimed calls, then `--repeats` timed calls
with `--new-tokens` tokens and `--repeats` with 1 token (time to first token, to split off the prefill).
Writes JSON (config + results + ratios against the targets + checks), CSV and a PNG next to it, prints a table.
This module holds the targets, the report and the CLI; the harness (timing, memory, bandwidth, Bench, outputs) is
decode_harness.py and the modes with their registry RUNNERS are decode_modes.py.

Timing is the wall time of one whole generate call (prefill included), as a user sees it. tokens/s counts
generated tokens across the batch; ms/token is wall time per decode step (per generated position, all rows in
parallel). decode_tokens_per_s excludes the prefill: B * (N - 1) / (median t_N - median t_1).
Rows always run to the token budget: the engine's EOS set is emptied and HF gets min_new_tokens = max_new_tokens
(vLLM's --ignore-eos); `eos_emitted` says whether an EOS id was generated anyway.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks.decode_harness import Bench, print_report, read_bandwidth_samples, write_outputs
from benchmarks.decode_modes import RUNNERS, add_weight_bandwidth, run_scaling

MODES = tuple(RUNNERS)  # in the order they run and print
# The other scoring rules (decoder.py), reported next to the ARGS modes as tokens/s relative to these modes.
RULE_MODES = ("rgd-token", "rgd-logratio", "rgd-bon-block")
RULE_BASES = ("engine-greedy", "rgd-shared")
REPO = Path(__file__).resolve().parents[1]

# (name, numerator (mode, field), denominator (mode, field) or None for an absolute value, op, target)
TARGETS = (
    ("engine_greedy_vs_hf_greedy", ("engine-greedy", "tokens_per_s"), ("hf-greedy", "tokens_per_s"), ">=", 1.1),
    ("rgd_shared_vs_engine_greedy", ("rgd-shared", "tokens_per_s"), ("engine-greedy", "tokens_per_s"), ">=", 0.55),
    ("rgd_separate_vs_engine_greedy", ("rgd-separate", "tokens_per_s"), ("engine-greedy", "tokens_per_s"), ">=", 0.35),
    ("rgd_shared_vs_args_nocache", ("rgd-shared", "tokens_per_s"), ("args-nocache", "tokens_per_s"), ">=", 40.0),
    ("rgd_shared_vs_args_kcopy", ("rgd-shared", "tokens_per_s"), ("args-kcopy", "tokens_per_s"), ">=", 1.5),
    ("kv_rgd_shared_vs_args_kcopy", ("rgd-shared", "kv_cache_mb"), ("args-kcopy", "kv_cache_mb"), "<=", 0.25),
    ("rgd_mixed_vs_single_user", ("rgd-mixed", "tokens_per_s"), ("rgd-mixed", "single_user_tokens_per_s"), ">=", 0.9),
    ("kv_rgd_shared_vs_engine_greedy", ("rgd-shared", "kv_cache_mb"), ("engine-greedy", "kv_cache_mb"), "<=", 1.1),
    ("head_swap_ms", ("head-swap", "swap_ms_median"), None, "<", 1.0),
    ("head_swap_next_step_uses_new_head", ("head-swap", "next_step_uses_new_head"), None, "==", True),
)


# ---------------------------------------------------------------------------------------------------------------
# Report: ratios, checks, config
# ---------------------------------------------------------------------------------------------------------------
def _passes(value, op: str, target) -> bool:
    return {">=": value >= target, "<=": value <= target, "<": value < target, "==": value == target}[op]


def rule_ratios(results: dict) -> dict:
    """tokens/s of each other-rule mode relative to engine-greedy and rgd-shared (no targets: information)."""
    return {f"{m}_vs_{b}": results[m]["tokens_per_s"] / results[b]["tokens_per_s"]
            for m in RULE_MODES for b in RULE_BASES if m in results and b in results}


def compute_ratios(results: dict) -> dict:
    """Each target whose modes were run: value, target, op, pass (and the prefill-free value for tokens/s)."""
    out = {}
    for name, (num_mode, num_key), den, op, target in TARGETS:
        if num_mode not in results or (den is not None and den[0] not in results):
            continue
        num = results[num_mode][num_key]
        entry = {"value": num if den is None else num / results[den[0]][den[1]], "target": target, "op": op}
        if den is not None and num_key == den[1] == "tokens_per_s":
            dn, dd = results[num_mode]["decode_tokens_per_s"], results[den[0]]["decode_tokens_per_s"]
            entry["decode_only_value"] = dn / dd if dn and dd else None
        entry["pass"] = bool(_passes(entry["value"], op, target))
        out[name] = entry
    return out


# Fraction of the weight-read floor engine-greedy must reach, per dtype (bf16 reads half the bytes, so its
# fixed per-step costs weigh twice as much).
FLOOR_TARGETS = {"float32": 0.45, "bfloat16": 0.40}
# Against a float32 baseline run (--baseline), a bfloat16 run's engine-greedy must be this much faster.
BF16_VS_FP32_TARGETS = (("engine_greedy_vs_baseline_engine_greedy", "engine-greedy", 2.0),
                        ("engine_greedy_vs_baseline_hf_greedy", "hf-greedy", 2.5))


def floor_ratios(results: dict, dtype: str) -> dict:
    r = results.get("engine-greedy")
    if not r or r.get("floor_fraction") is None or dtype not in FLOOR_TARGETS:
        return {}
    target = FLOOR_TARGETS[dtype]
    return {f"engine_greedy_floor_fraction_{dtype}": {"value": r["floor_fraction"], "target": target, "op": ">=",
                                                      "pass": r["floor_fraction"] >= target}}


def baseline_ratios(results: dict, dtype: str, baseline: dict) -> dict:
    """engine-greedy of this run against modes of a baseline report (e.g. bf16 here vs fp32 there); targets only
    for bfloat16 against float32."""
    out = {}
    base_dtype = baseline["config"]["params"].get("dtype")
    for name, base_mode, target in BF16_VS_FP32_TARGETS:
        if "engine-greedy" not in results or base_mode not in baseline["results"]:
            continue
        value = results["engine-greedy"]["tokens_per_s"] / baseline["results"][base_mode]["tokens_per_s"]
        entry = {"value": value, "baseline_dtype": base_dtype, "dtype": dtype}
        if (dtype, base_dtype) == ("bfloat16", "float32"):
            entry |= {"target": target, "op": ">=", "pass": value >= target}
        out[name] = entry
    return out


def compute_checks(results: dict) -> dict:
    """Token-level agreement between modes that run the same algorithm (prefix when lengths differ)."""

    def same(a: str, b: str):
        if a not in results or b not in results:
            return None
        ta, tb = results[a]["tokens"], results[b]["tokens"]
        n = min(len(ta[0]), len(tb[0]))
        return [row[:n] for row in ta] == [row[:n] for row in tb]

    checks = {
        "engine-greedy == hf-greedy": same("engine-greedy", "hf-greedy"),
        "args-kcopy == rgd-separate": same("args-kcopy", "rgd-separate"),
        "args-nocache == rgd-separate (prefix)": same("args-nocache", "rgd-separate"),
        "kv formula == measured": all(r["kv_cache_mb"] == r["kv_cache_mb_measured"] for r in results.values()
                                      if r.get("kv_cache_mb") is not None),
    }
    if "rgd-mixed" in results:  # row 0 has user u0 in both batches, so the same head
        m = results["rgd-mixed"]
        checks["rgd-mixed row 0 == single-user row 0"] = m["tokens"][0] == m["single_user_tokens"][0]
    return {k: v for k, v in checks.items() if v is not None}


def _git(*cmd: str) -> str | None:
    try:
        return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info(device: torch.device) -> dict:
    info = {"cpu": _cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(),
            "load_average_start": list(os.getloadavg())}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def build_config(args, argv: list[str], bench: Bench) -> dict:
    import transformers

    from rgd_engine.kernels import requested_backend, resolve_backend

    return {
        "params": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine_info(bench.device),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "backend": resolve_backend((args.backend or requested_backend()).lower(), bench.device.type),
        "git_hash": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.decode " + shlex.join(argv),
        "notes": {
            "timing": "wall time of one whole generate call incl. prefill; ms/token = per decode step; "
                      "decode_tokens_per_s excludes prefill via the 1-token calls",
            "eos": "EOS ignored: engine GenerationConfig(ignore_eos=True), HF min_new_tokens=max_new_tokens, baselines have none",
            "args-nocache": f"measured with {args.nocache_new_tokens} new tokens (slow); compare ms/token",
            "args-kcopy": "prompt prefilled once then repeated k times (the ARGS reference prefills k copies)",
            "baselines": "both ARGS baselines use the separate reward backbone (--reward-model)",
            "kv_cache_mb": "from shapes: layers x 2 x rows x kv_heads x slots x head_dim x bytes; "
                           "kv_cache_mb_measured from the caches themselves",
            "peak_mem_mb": "CPU: process RSS peak during the check call (models included); CUDA: max_memory_allocated",
        },
    }

# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decode", description=__doc__.split("\n")[0])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "decode.json",
                   help="JSON path; the CSV and PNG are written next to it")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--model", default="demo")
    p.add_argument("--reward-model", default=None, help="separate reward backbone (default: --model, loaded again)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--baseline", type=Path, default=None,
                   help="an earlier report JSON (e.g. the float32 run) to compare this run's engine-greedy against")
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("-k", "--k", type=int, default=10)
    p.add_argument("-w", "--weight", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per mode (the first is the check call)")
    p.add_argument("--backend", choices=("auto", "torch", "cpp", "triton", "cuda"), default=None,
                   help="kernel backend (default: $RGD_BACKEND or auto)")
    p.add_argument("--nocache-new-tokens", type=int, default=4, help="new tokens for the slow args-nocache mode")
    p.add_argument("--mixed-batch", type=int, default=8)
    p.add_argument("--swap-users", type=int, default=10_000)
    p.add_argument("--swap-repeats", type=int, default=1000)
    p.add_argument("--cuda-graph", action="store_true",
                   help="engine-greedy and rgd-shared replay each step from a CUDA graph (rgd_engine/graph_step.py; "
                        "on CPU the same static step runs without one)")
    p.add_argument("--scaling", action="store_true", help="also rgd-shared tokens/s vs k and vs batch")
    p.add_argument("--scaling-k", type=int, nargs="+", default=[1, 4, 10, 32])
    p.add_argument("--scaling-batch", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--scaling-repeats", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--token-rank", type=int, default=8, help="rgd-token: rank r of the token-level heads")
    p.add_argument("--context-len", type=int, default=256, help="rgd-logratio: profile tokens before the prompt")
    p.add_argument("--bon-samples", type=int, default=4, help="rgd-bon-block: samples N per block")
    p.add_argument("--bon-block-size", type=int, default=8, help="rgd-bon-block: tokens M per block")
    args = p.parse_args(argv)
    if args.new_tokens < 2 or args.nocache_new_tokens < 2:
        p.error("--new-tokens and --nocache-new-tokens must be >= 2 (the prefill split needs a decode step)")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device")
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    bench = Bench(args)
    config = build_config(args, argv, bench)
    samples = read_bandwidth_samples(bench.device)
    results = {}
    for mode in args.modes:
        results[mode] = RUNNERS[mode](bench)
    report = {"config": config, "results": results}
    if args.scaling:
        report["scaling"] = run_scaling(bench)
    config["machine"]["load_average_end"] = list(os.getloadavg())
    # measured before and after the modes: the floor is the median of both sets
    samples += read_bandwidth_samples(bench.device)
    config["machine"]["read_bandwidth_samples_gb_s"] = samples
    config["machine"]["read_bandwidth_gb_s"] = float(np.median(samples))
    add_weight_bandwidth(results, bench, config["machine"]["read_bandwidth_gb_s"])
    report["ratios"] = compute_ratios(results) | floor_ratios(results, args.dtype)
    if args.baseline:
        report["vs_baseline"] = baseline_ratios(results, args.dtype, json.loads(args.baseline.read_text()))
        report["vs_baseline_path"] = str(args.baseline)
    report["rule_ratios"] = rule_ratios(results)
    report["checks"] = compute_checks(results)
    write_outputs(report, args.json)
    print_report(report)
    return report


if __name__ == "__main__":
    main()
