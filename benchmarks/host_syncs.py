"""Host syncs per decode step: how often the decoder reads a device value into Python.

    python -m benchmarks.host_syncs [--model demo] [--new-tokens 32] [--batch 4] [--json PATH]

Every such read blocks a GPU stream until the device catches up, and rules out capturing the step in a CUDA graph.
Counted, per generate call, with torch.profiler (works on CPU, where nothing really waits):
- `aten::_local_scalar_dense`: `.item()`, `int(t)`, `float(t)`, `bool(t)` (and `if t.any():`); `aten::nonzero`
  and friends (boolean indexing: the output size is read on the host);
- `Tensor.tolist()` and `Tensor.numpy()` (patched for the count: they read memory without a dispatcher op on CPU).
The figure is (syncs of an N-token call - syncs of a 1-token call) / (N - 1): per decode step, prefill excluded.
"""
from __future__ import annotations

import argparse
import json
from contextlib import contextmanager
from pathlib import Path

import torch

CASES = ("greedy", "args", "token", "logratio", "bon-block")


# dispatcher ops that copy a device value to the host (or need its size on the host) before returning
SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::unique_consecutive",
            "aten::_unique2")


class _Count:
    n = 0


@contextmanager
def count_syncs():
    """Counts host syncs in the block (the profiler sees dispatcher ops under inference_mode too)."""
    from torch.profiler import ProfilerActivity, profile

    counter = _Count()
    originals = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy")}

    def wrap(name):
        def counted(self, *a, **kw):
            counter.n += 1
            return originals[name](self, *a, **kw)
        return counted

    try:
        for name in originals:
            setattr(torch.Tensor, name, wrap(name))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            yield counter
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)
    counter.n += sum(e.count for e in prof.key_averages() if e.key in SYNC_OPS)


def syncs_per_step(engine, case: str, prompts: list[str], new_tokens: int, sync_every: int | None = None) -> float:
    d = engine.hidden_size
    g = torch.Generator().manual_seed(0)
    kw = dict(ignore_eos=True, k=10, weight=1.0)
    if sync_every is not None:  # passed only when set, so the count also runs on engines older than sync_every
        kw["sync_every"] = sync_every
    users = None
    if case in ("args", "bon-block"):
        bank = engine.new_bank(capacity=2)
        bank.add("u", torch.randn(d, generator=g) / d ** 0.5)
        kw.update(heads=bank, rule=case)
        users = ["u"] * len(prompts)
        if case == "bon-block":
            kw.update(n_samples=2, block_size=4, seed=0)
    elif case == "token":
        bank = engine.new_token_bank(rank=2, capacity=2)
        bank.add("u", torch.randn(2, d, generator=g) * 0.05, torch.randn(2, d, generator=g) * 0.05)
        kw.update(heads=bank, rule="token")
        users = ["u"] * len(prompts)
    elif case == "logratio":
        kw.update(rule="logratio", cond_prompts=["A profile. " + p for p in prompts])

    def count(n: int) -> int:
        engine.generate(prompts, users=users, max_new_tokens=n, **kw)  # warm (lazy imports, first-call paths)
        with count_syncs() as c:
            engine.generate(prompts, users=users, max_new_tokens=n, **kw)
        return c.n

    return (count(new_tokens) - count(1)) / (new_tokens - 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    p.add_argument("--backend", default=None, help="kernel backend (the C++ CPU binding reads slot and id ranges "
                   "from CPU memory for memory safety: counted, though no device is involved; the CUDA binding "
                   "does not; use torch to count what a GPU step would do)")
    p.add_argument("--sync-every", type=int, default=None, help="GenerationConfig.sync_every (default: the device's)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    from rgd_engine import Engine, EngineConfig

    engine = Engine.from_config(EngineConfig(model=args.model), backend=args.backend)
    prompts = [f"Report {i}. The harbour town wakes slowly in winter." for i in range(args.batch)]
    out = {case: syncs_per_step(engine, case, prompts, args.new_tokens, args.sync_every) for case in args.cases}
    for case, n in out.items():
        print(f"{case:10s} {n:6.2f} host syncs per decode step (batch {args.batch}, backend {args.backend or 'auto'}, "
              f"sync_every {args.sync_every or 'default'})")
    if args.json:
        args.json.write_text(json.dumps({"batch": args.batch, "new_tokens": args.new_tokens,
                                         "backend": args.backend, "sync_every": args.sync_every,
                                         "syncs_per_step": out},
                                        indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
