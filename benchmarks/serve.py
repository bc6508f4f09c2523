"""rgd-serve throughput: aggregate tokens/s and p50 / p99 request latency at 1, 4 and 16 concurrent clients,
plain and reward-guided (ARGS, a different user per request), against the same requests run one by one through
`Engine.generate` in the same process.

    python -m benchmarks.serve [--model demo] [--requests 16] [--new-tokens 24] [--clients 1,4,16]
                               [--modes plain,rgd] [--max-seconds 1200] [--json PATH]

The server runs in this process on a free 127.0.0.1 port (loopback only) and is driven by the official `openai`
client (non-streaming requests, one thread per concurrent client). Every request runs to --new-tokens (ignore_eos)
and has its own prompt length, so rows of a batch differ in length. Each phase sends the same --requests requests;
tokens/s = generated tokens / wall time of the phase; latency = one request's wall time as its client sees it.
The server's answers are checked against the sequential ones (token ids), and the count of identical answers is
reported. --max-seconds bounds the whole run: phases that would start after it are skipped (and listed).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.decode_harness import PROMPT_TEXT, random_bank

TARGET_SPEEDUP_AT_16 = 2.0


def build_requests(n: int, n_users: int, mode: str) -> list[dict]:
    """n requests with prompts of different lengths (about 30 - 90 tokens) and users u0.. in turn."""
    reqs = []
    for i in range(n):
        text = f"Report {i + 1}. " + PROMPT_TEXT[: 120 + (97 * i) % 300]
        rgd = {"rule": "args", "k": 10, "w": 1.0} if mode == "rgd" else None
        reqs.append({"prompt": text, "user": f"u{i % n_users}" if rgd else None, "rgd": rgd})
    return reqs


def run_sequential(engine, bank, reqs: list[dict], new_tokens: int) -> tuple[dict, list]:
    from rgd_engine import GenerationConfig

    latencies, outputs = [], []
    start = time.perf_counter()
    for r in reqs:
        cfg = GenerationConfig(max_new_tokens=new_tokens, k=(r["rgd"] or {}).get("k", 10), weight=1.0,
                               ignore_eos=True)
        t = time.perf_counter()
        out = engine.generate([r["prompt"]], users=[r["user"]], heads=bank if r["rgd"] else None, config=cfg)[0]
        latencies.append(time.perf_counter() - t)
        outputs.append(out.token_ids)
    return _summary(time.perf_counter() - start, latencies, sum(len(o) for o in outputs)), outputs


def run_clients(url: str, reqs: list[dict], new_tokens: int, clients: int) -> tuple[dict, list]:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=3600)

    def one(r):
        t = time.perf_counter()
        resp = client.completions.create(model="bench", prompt=r["prompt"], max_tokens=new_tokens, user=r["user"],
                                          extra_body={"ignore_eos": True, **({"rgd": r["rgd"]} if r["rgd"] else {})})
        return time.perf_counter() - t, resp.model_extra["rgd"]["token_ids"]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, reqs))
    wall = time.perf_counter() - start
    outputs = [ids for _, ids in results]
    return _summary(wall, [lat for lat, _ in results], sum(len(o) for o in outputs)), outputs


def _summary(wall: float, latencies: list[float], tokens: int) -> dict:
    lat = np.array(latencies)
    return {"wall_s": round(wall, 3), "tokens": tokens, "tokens_per_s": round(tokens / wall, 3),
            "latency_p50_s": round(float(np.percentile(lat, 50)), 3),
            "latency_p99_s": round(float(np.percentile(lat, 99)), 3)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--modes", default="plain,rgd")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-seconds", type=float, default=1200.0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    import torch

    from rgd_engine import Engine, EngineConfig
    from rgd_engine.serve.app import ServerState
    from rgd_engine.serve.background import serve_in_background
    from rgd_engine.serve.head_store import HeadStore
    from rgd_engine.serve.scheduler import Scheduler

    t0 = time.monotonic()
    load_start = os.getloadavg()
    engine = Engine.from_config(EngineConfig(model=args.model))
    n_users = 16
    bank = random_bank(engine, n_users, seed=0)
    clients = [int(c) for c in args.clients.split(",")]
    results, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        bank_path = Path(tmp) / "heads.safetensors"
        bank.save(bank_path)
        state = ServerState(engine, HeadStore({"sequence": (bank, bank_path)}),
                            Scheduler(engine.decoder, max_rows=args.max_batch, max_queue=4 * args.max_batch), "bench")
        with serve_in_background(state) as url:
            for mode in args.modes.split(","):
                reqs = build_requests(args.requests, n_users, mode)
                run_clients(url, reqs[:2], 2, 2)  # warm-up (allocators, first-call overheads), untimed
                if time.monotonic() - t0 > args.max_seconds:
                    skipped.append(f"{mode} sequential")
                    continue
                seq, seq_out = run_sequential(engine, bank, reqs, args.new_tokens)
                results.append({"mode": mode, "clients": "sequential", **seq, "speedup": 1.0, "identical": None})
                print(json.dumps(results[-1]), flush=True)
                for c in clients:
                    if time.monotonic() - t0 > args.max_seconds:
                        skipped.append(f"{mode} {c} clients")
                        continue
                    srv, out = run_clients(url, reqs, args.new_tokens, c)
                    same = sum(a == b for a, b in zip(out, seq_out))
                    results.append({"mode": mode, "clients": c, **srv,
                                    "speedup": round(srv["tokens_per_s"] / seq["tokens_per_s"], 3),
                                    "identical": f"{same}/{len(reqs)}"})
                    print(json.dumps(results[-1]), flush=True)
    report = {"model": args.model, "requests": args.requests, "new_tokens": args.new_tokens,
              "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "loadavg_start": [round(x, 2) for x in load_start],
              "loadavg_end": [round(x, 2) for x in os.getloadavg()], "seconds": round(time.monotonic() - t0, 1),
              "skipped": skipped, "results": results,
              "target": f"tokens/s at 16 clients >= {TARGET_SPEEDUP_AT_16}x sequential"}
    print(table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


def table(report: dict) -> str:
    lines = [f"model {report['model']}, {report['requests']} requests x {report['new_tokens']} new tokens, "
             f"load average {report['loadavg_start']} -> {report['loadavg_end']}, {report['seconds']} s",
             "", "| mode | clients | tokens/s | p50 latency s | p99 latency s | vs sequential | identical to sequential |",
             "|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        lines.append(f"| {r['mode']} | {r['clients']} | {r['tokens_per_s']:.2f} | {r['latency_p50_s']:.2f} | "
                     f"{r['latency_p99_s']:.2f} | {r['speedup']:.2f}x | {r['identical'] or ''} |")
    if report["skipped"]:
        lines.append(f"\nskipped (--max-seconds): {', '.join(report['skipped'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
