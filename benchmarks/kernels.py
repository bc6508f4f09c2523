"""Kernel benchmark: the hot ops per backend vs the torch reference, measured in the same run.

    python -m benchmarks.kernels [--device cpu|cuda] [--json PATH] [--repeats N]

Shapes: B in {1, 16}, V = 49152, d = 576, k = 10 (a SmolLM-class LM head; score_select with U = 64 heads;
gather_score_select with the LM head as the embedding table and the `logratio` rule, ratio = 1).
Rows per op and B: every available backend (dispatch decides availability; triton on CPU only under
TRITON_INTERPRET=1, which is far too slow to be worth timing), the torch reference, and "torch-fast", what a
user would write (matmul + logsumexp + torch.topk / for both selection ops a gather + bmm + argmax). On CUDA
the "floor" column is the time to read W once at the measured device copy bandwidth.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from rgd_engine.kernels import dispatch, reference

V, D, K, U = 49152, 576, 10, 64


def torch_fast_lmhead(hidden, weight, k):
    # [B, d] x [V, d]: what a user would write; materializes [B, V] but uses torch.topk instead of a full sort
    logits = hidden.float() @ weight.float().t()
    lse = torch.logsumexp(logits, dim=-1)
    top = torch.topk(logits, k, dim=-1)
    return top.values - lse[:, None], top.indices, lse


def torch_fast_score_select(cand, bank_w, bank_b, slot, logprob, weight, mode, tau, rand):
    # [B, k, d]: bmm with the gathered heads, then argmax
    safe = slot.clamp(min=0)
    r = torch.bmm(cand, bank_w[safe][:, :, None]).squeeze(-1) + bank_b[safe][:, None]
    r = r * (slot >= 0)[:, None]
    s = logprob + weight[:, None] * r
    return s.argmax(-1), s, r


def torch_fast_gather_score_select(query, emb, cand_ids, offset, logprob, weight, ratio, mode, tau, rand):
    # [B, k, d]: gather the candidate rows, bmm with the query, then argmax
    r = torch.bmm(emb[cand_ids], query[:, :, None]).squeeze(-1) + offset[:, None] - ratio * logprob
    s = logprob + weight[:, None] * r
    return s.argmax(-1), s, r


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device, nbytes: int = 1 << 30) -> float:
    """Device memory bandwidth in bytes/s from a large copy (read + write)."""
    src = torch.empty(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    t = median_seconds(lambda: dst.copy_(src), device, repeats=20)
    return 2 * nbytes / t


def run(device: torch.device, repeats: int):
    g = torch.Generator().manual_seed(0)
    weight = (torch.randn(V, D, generator=g) / D ** 0.5).to(device)
    bank_w, bank_b = torch.randn(U, D, generator=g).to(device), torch.randn(U, generator=g).to(device)
    backends = [b for b in dispatch.BACKENDS if b != "torch" and dispatch.unavailable_reason(b, device.type) is None]
    floor_s = weight.numel() * weight.element_size() / copy_bandwidth(device) if device.type == "cuda" else None
    rows = []
    for B in (1, 16):
        hidden = torch.randn(B, D, generator=g).to(device)
        cand = torch.randn(B, K, D, generator=g).to(device)
        slot = torch.randint(-1, U, (B,), generator=g).to(device)
        logprob = (-torch.rand(B, K, generator=g) * 5).to(device)
        wgt, rand = torch.rand(B, generator=g).to(device), torch.rand(B, generator=g).to(device)
        cand_ids, offset = torch.randint(0, V, (B, K), generator=g).to(device), torch.randn(B, generator=g).to(device)
        gather_args = (hidden, weight, cand_ids, offset, logprob, wgt, 1.0, reference.GREEDY, 1.0, rand)
        impls = {
            "lmhead_topk": ({"reference": lambda: reference.lmhead_topk_ref(hidden, weight, K),
                             "torch-fast": lambda: torch_fast_lmhead(hidden, weight, K)}
                            | {b: (lambda m=dispatch._load(b): m.lmhead_topk(hidden, weight, K)) for b in backends}),
            "score_select": ({"reference": lambda: reference.score_select_ref(cand, bank_w, bank_b, slot, logprob, wgt,
                                                                                  reference.GREEDY, 1.0, rand),
                              "torch-fast": lambda: torch_fast_score_select(cand, bank_w, bank_b, slot, logprob, wgt,
                                                                            reference.GREEDY, 1.0, rand)}
                             | {b: (lambda m=dispatch._load(b): m.score_select(cand, bank_w, bank_b, slot, logprob,
                                                                                wgt, reference.GREEDY, 1.0, rand))
                                for b in backends}),
            "gather_score_select": ({"reference": lambda: reference.gather_score_select_ref(*gather_args),
                                     "torch-fast": lambda: torch_fast_gather_score_select(*gather_args)}
                                    | {b: (lambda m=dispatch._load(b): m.gather_score_select(*gather_args))
                                       for b in backends}),
        }
        for op, fns in impls.items():
            n = repeats if op == "lmhead_topk" else repeats * 20
            times = {name: median_seconds(fn, device, n) for name, fn in fns.items()}
            for name, t in times.items():
                row = {"op": op, "backend": name, "B": B, "V": V, "d": D, "k": K, "median_ms": t * 1e3,
                       "speedup_vs_reference": times["reference"] / t, "repeats": n}
                if floor_s is not None and op == "lmhead_topk":
                    row["floor_ms"] = floor_s * 1e3
                    row["floor_fraction"] = floor_s / t
                rows.append(row)
    meta = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(), "backends": backends,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.node()}
    return {"meta": meta, "rows": rows}


def print_table(result):
    m = result["meta"]
    print(f"device={m['device']} ({m['device_name']}) torch={m['torch']} threads={m['threads']}")
    has_floor = any("floor_ms" in r for r in result["rows"])
    head = f"{'op':<19} {'B':>3} {'backend':<11} {'median ms':>10} {'x ref':>7}" + ("  floor ms  of floor" if has_floor else "")
    print(head)
    print("-" * len(head))
    for r in result["rows"]:
        line = f"{r['op']:<19} {r['B']:>3} {r['backend']:<11} {r['median_ms']:>10.4f} {r['speedup_vs_reference']:>7.2f}"
        if "floor_ms" in r:
            line += f"  {r['floor_ms']:>8.4f}  {r['floor_fraction']:>7.1%}"
        print(line)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="write the results as JSON to this path")
    ap.add_argument("--repeats", type=int, default=30, help="timed calls per lmhead_topk measurement (x20 for the selection ops)")
    args = ap.parse_args(argv)
    result = run(torch.device(args.device), args.repeats)
    print_table(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
