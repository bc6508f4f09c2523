"""Per-op CPU timings of a decode step's few-row inputs: the C++ kernels against the torch ops they replace.

    python -m benchmarks.few_row_ops [--dtypes float32 bfloat16] [--rows 1 2 4 8 10 16] [--json PATH]

Shapes are the demo model's (SmolLM2-135M: d = 576, 30 layers, 9 query / 3 kv heads of 64, MLP 1536,
V = 49152), with random weights: one set per layer, so a pass over the 30 layers reads 212 MB (bf16) from memory
as a decode step does, not from cache. Per dtype and row count M:
- projections: the four fused projections of all 30 layers (QKV, O, gate|up, down), `cpp.small_linear`
  against `F.linear` on the same [N, K] weights;
- rms_norm: 61 norms of [M, 576] (a step's two per layer and the final one), `cpp.rms_norm` against the
  fast forward's torch formula;
- lmhead at M = 1: `cpp.lmhead_topk` (k = 10) against torch's matmul + log_softmax + topk.
Median of --repeats timed passes after one untimed pass. The fast forward's choice (SMALL_M in
rgd_engine/models/fast_llama.py) is read off the projection rows of this table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rgd_engine.kernels import cpp
from rgd_engine.models.fast_llama import rms_norm

D_MODEL, LAYERS, HEADS, KV_HEADS, HEAD_DIM, MLP, VOCAB = 576, 30, 9, 3, 64, 1536, 49152
PROJECTIONS = [((HEADS + 2 * KV_HEADS) * HEAD_DIM, D_MODEL), (D_MODEL, HEADS * HEAD_DIM), (2 * MLP, D_MODEL),
               (D_MODEL, MLP)]  # [N, K] per layer: QKV, O, gate|up, down


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def measure(dtype: torch.dtype, rows: list[int], repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    weights = [[torch.randn(n, k, generator=g).to(dtype) for n, k in PROJECTIONS] for _ in range(LAYERS)]
    nbytes = sum(w.numel() * w.element_size() for layer in weights for w in layer)
    norm_w = torch.randn(D_MODEL, generator=g).to(dtype)
    out = {"projection_bytes": nbytes, "projections": {}, "rms_norm": {}}
    for m in rows:
        xs = [torch.randn(m, k, generator=g).to(dtype) for _, k in PROJECTIONS]
        ours = _median_ms(lambda: [cpp.small_linear(x, w) for layer in weights for w, x in zip(layer, xs)], repeats)
        theirs = _median_ms(lambda: [F.linear(x, w) for layer in weights for w, x in zip(layer, xs)], repeats)
        out["projections"][m] = {"small_linear_ms": ours, "torch_ms": theirs, "speedup": theirs / ours,
                                 "small_linear_gb_s": nbytes / ours / 1e6, "torch_gb_s": nbytes / theirs / 1e6}
        h = torch.randn(1, m, D_MODEL, generator=g).to(dtype)
        ours = _median_ms(lambda: [cpp.rms_norm(h[0], norm_w, 1e-5) for _ in range(2 * LAYERS + 1)], repeats)
        theirs = _median_ms(lambda: [rms_norm(h, norm_w, 1e-5) for _ in range(2 * LAYERS + 1)], repeats)
        out["rms_norm"][m] = {"cpp_ms": ours, "torch_ms": theirs, "speedup": theirs / ours}
    head = torch.randn(VOCAB, D_MODEL, generator=g).to(dtype)
    h = torch.randn(1, D_MODEL, generator=g).to(dtype)
    ours = _median_ms(lambda: cpp.lmhead_topk(h, head, 10), repeats)
    theirs = _median_ms(lambda: torch.log_softmax((h @ head.t()).float(), -1).topk(10), repeats)
    out["lmhead_topk_1_row"] = {"cpp_ms": ours, "torch_ms": theirs, "speedup": theirs / ours,
                                "cpp_gb_s": head.numel() * head.element_size() / ours / 1e6}
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    p.add_argument("--rows", nargs="+", type=int, default=[1, 2, 4, 8, 10, 16])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if any(m < 1 for m in args.rows) or args.repeats < 1:
        p.error("--rows and --repeats must be >= 1")
    report = {"threads": torch.get_num_threads(), "torch": torch.__version__, "dtypes": {}}
    for name in args.dtypes:
        dtype = getattr(torch, name)
        if not cpp.small_linear_native(dtype):
            print(f"{name}: this CPU cannot run small_linear (needs AVX-512{'/BF16' if name == 'bfloat16' else ''})")
            continue
        r = report["dtypes"][name] = measure(dtype, args.rows, args.repeats)
        print(f"\n{name}: projections of 30 layers ({r['projection_bytes'] / 1e6:.0f} MB), 61 rms_norms")
        print(f"{'rows':>4} {'small_linear ms':>16} {'torch ms':>9} {'x':>5} {'GB/s':>11} | "
              f"{'rms_norm cpp ms':>15} {'torch ms':>9} {'x':>5}")
        for m in args.rows:
            a, b = r["projections"][m], r["rms_norm"][m]
            print(f"{m:>4} {a['small_linear_ms']:>16.2f} {a['torch_ms']:>9.2f} {a['speedup']:>5.2f} "
                  f"{a['small_linear_gb_s']:>5.1f}/{a['torch_gb_s']:<5.1f} | "
                  f"{b['cpp_ms']:>15.2f} {b['torch_ms']:>9.2f} {b['speedup']:>5.2f}")
        lm = r["lmhead_topk_1_row"]
        print(f"lmhead_topk, 1 row: C++ {lm['cpp_ms']:.2f} ms ({lm['cpp_gb_s']:.1f} GB/s), torch {lm['torch_ms']:.2f} "
              f"ms ({lm['speedup']:.2f}x)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
