"""The decode benchmark's harness (`python -m benchmarks.decode`): timing, peak memory, the KV-bytes formula, the
machine's read bandwidth and a model's weight bytes, the Bench every mode shares (engines, prompts, banks), and
the outputs (JSON, CSV, PNG, the printed table). The modes are in decode_modes.py, the targets and CLI in
decode.py."""
from __future__ import annotations

import contextlib
import ctypes
import json
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

# Row i's prompt is "Report {i}. " + this text, repeated and cut to --prompt-len tokens. Plain prose that a
# small LM continues without ending the document soon.
PROMPT_TEXT = (
    "The harbour town wakes slowly in winter. Fishing boats leave before dawn, their lamps swinging over the grey "
    "water, and the bakery on the corner opens its shutters at six. By eight the market square fills with stalls "
    "selling bread, cheese, apples and wool. Children walk to the school on the hill, and the ferry to the island "
    "sounds its horn twice before it leaves. In the afternoon the wind rises, the gulls circle the breakwater, and "
    "the old men who mend nets on the quay talk about the weather, the price of diesel and the football results. "
)


@dataclass
class Run:
    tokens: list  # [B][N] generated ids
    kv_bytes: int  # KV-cache bytes the call held (the engine's Generation.kv_bytes, HF's cache, a baseline's)

# ---------------------------------------------------------------------------------------------------------------
# Measurement helpers
# ---------------------------------------------------------------------------------------------------------------
def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(call, n: int, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    call(n)
    sync(device)
    return time.perf_counter() - t0


def _release_freed_memory():
    """Return freed heap to the OS (glibc) so RSS before a call is not inflated by earlier modes."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory over a block: RSS sampled by a thread on CPU, max_memory_allocated on CUDA. In MB."""

    def __init__(self, device: torch.device, interval_s: float = 0.005):
        self.device, self.interval = device, interval_s
        self.start_mb = self.peak_mb = 0.0

    def _rss_mb(self) -> float:
        import psutil

        return psutil.Process().memory_info().rss / 2**20

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mb = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            _release_freed_memory()
            self.start_mb = self.peak_mb = self._rss_mb()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, self._rss_mb())


def kv_bytes(config, rows: int, length: int, dtype: torch.dtype) -> int:
    """KV bytes of `rows` sequences of `length` slots: layers x 2 x rows x kv_heads x length x head_dim x bytes."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    elem = torch.empty((), dtype=dtype).element_size()
    return config.num_hidden_layers * 2 * rows * kv_heads * length * head_dim * elem


def percentiles(values: list[float]) -> dict:
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return {"median": float(p50), "p10": float(p10), "p90": float(p90)}


def mb(nbytes: int | None) -> float | None:
    return None if nbytes is None else nbytes / 2**20


def read_bandwidth_samples(device: torch.device, gib: float = 1.0, allocations: int = 3,
                           repeats: int = 3) -> list[float]:
    """The machine's read bandwidth in GB/s, one figure per fresh `gib` GiB fp32 tensor: the fastest of `repeats`
    timed sums of it (a streaming reduction, after one untimed pass). Fastest per tensor: on a shared VM other
    tenants only ever slow a pass down. Several samples (and the caller takes them before and after its work):
    on the VM this was written on, the same sum ran at 55 GB/s and at 32 GB/s minutes apart in one process."""
    out = []
    for _ in range(allocations):
        x = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32, device=device)
        x.sum()
        out.append(x.numel() * 4 / min(timed(lambda _, t=x: t.sum(), 0, device) for _ in range(repeats)) / 1e9)
    return out


def weight_bytes(model: torch.nn.Module, lm_head: bool = True) -> int:
    """Bytes of weights one decode step reads: every parameter except the input embedding (a step reads B of
    its rows), plus the LM head when lm_head (with tied embeddings the LM head is that matrix, counted once)."""
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    params = {id(p): p for p in model.parameters()}  # parameters() yields a tied weight once
    params.pop(id(emb), None)
    if lm_head:
        params[id(head)] = head
    else:
        params.pop(id(head), None)
    return sum(p.numel() * p.element_size() for p in params.values())

def measure(name: str, call, *, batch: int, new_tokens: int, args, device, kv_formula: int, eos_ids: set,
            first_token: bool = True, repeats: int | None = None) -> dict:
    """Check call, warm-up, then timed repeats of call(new_tokens) and (first_token) call(1) -> a result dict."""
    repeats = repeats or args.repeats
    with PeakMemory(device) as mem:
        check = call(new_tokens)
    lengths = {len(t) for t in check.tokens}
    if len(check.tokens) != batch or lengths != {new_tokens}:
        raise RuntimeError(f"{name}: expected {batch} rows of {new_tokens} tokens, got lengths {sorted(lengths)}")
    for _ in range(args.warmup - 1):
        call(new_tokens)
    bar = tqdm(total=repeats * (2 if first_token else 1), desc=name, leave=False)
    full, first = [], []
    for _ in range(repeats):
        full.append(timed(call, new_tokens, device))
        bar.update()
    for _ in range(repeats if first_token else 0):
        first.append(timed(call, 1, device))
        bar.update()
    bar.close()
    ms = percentiles([1000 * t / new_tokens for t in full])
    t_n = float(np.median(full))
    result = {
        "mode": name, "batch": batch, "new_tokens": new_tokens, "repeats": repeats,
        "tokens_per_s": batch * new_tokens / t_n,
        "ms_per_token_median": ms["median"], "ms_per_token_p10": ms["p10"], "ms_per_token_p90": ms["p90"],
        "ms_per_token_all": [1000 * t / new_tokens for t in full],
        "first_token_ms_median": None, "decode_tokens_per_s": None,
        "peak_mem_mb": mem.peak_mb, "peak_mem_delta_mb": mem.peak_mb - mem.start_mb,
        "kv_cache_mb": mb(kv_formula), "kv_cache_mb_measured": mb(check.kv_bytes),
        "eos_emitted": any(t in eos_ids for row in check.tokens for t in row),
        "tokens": check.tokens,
    }
    if first:
        t_1 = float(np.median(first))
        result["first_token_ms_median"] = 1000 * t_1
        # Prefill split: N - 1 decode steps separate the two calls.
        result["decode_tokens_per_s"] = batch * (new_tokens - 1) / (t_n - t_1) if t_n > t_1 else None
    return result

# ---------------------------------------------------------------------------------------------------------------
# Setup: models, prompts, head banks
# ---------------------------------------------------------------------------------------------------------------
class Bench:
    """Everything the modes share: engines (built lazily), prompts, banks."""

    def __init__(self, args):
        from rgd_engine import Engine, EngineConfig
        from rgd_engine.stopping import eos_token_ids

        self.args = args
        self.device = torch.device(args.device)
        cfg = EngineConfig(model=args.model, device=args.device, dtype=args.dtype)
        self.engine = Engine.from_config(cfg, backend=args.backend)
        self.eos_ids = eos_token_ids(self.engine.policy.hf_model, self.engine.tokenizer)
        self._separate = None
        n_rows = max([args.batch, args.mixed_batch] + (list(args.scaling_batch) if args.scaling else []))
        self.prompts = build_prompts(self.engine.tokenizer, n_rows, args.prompt_len)

    @property
    def separate(self):
        """Engine with a separate reward backbone: --reward-model loaded a second time (same size by default)."""
        if self._separate is None:
            from rgd_engine import Engine
            from rgd_engine.models import load_causal_lm

            rm = load_causal_lm(self.args.reward_model or self.args.model, self.args.dtype, self.args.device)
            self._separate = Engine(self.engine.policy, reward=rm, backend=self.args.backend)
        return self._separate

    def prompt_tensor(self, batch: int) -> torch.Tensor:
        return torch.tensor(self.prompts[:batch], dtype=torch.int64, device=self.device)  # [B, P]


def build_prompts(tokenizer, n: int, length: int) -> list[list[int]]:
    """n distinct prompts of exactly `length` tokens (no padding anywhere)."""
    prompts = []
    for i in range(n):
        text = f"Report {i + 1}. " + PROMPT_TEXT
        ids = tokenizer(text)["input_ids"]
        while len(ids) < length:
            text += PROMPT_TEXT
            ids = tokenizer(text)["input_ids"]
        prompts.append(ids[:length])
    return prompts


def random_bank(engine, n_users: int, seed: int):
    """Bank with users u0..u{n-1}; heads w ~ N(0, I/d), b ~ N(0, 1): rewards of order 1 per unit hidden norm."""
    d = engine.hidden_size
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n_users, d, generator=g) / math.sqrt(d)  # [U, d]
    b = torch.randn(n_users, generator=g)  # [U]
    bank = engine.new_bank(capacity=n_users)
    for i in range(n_users):
        bank.add(f"u{i}", W[i], float(b[i]))
    return bank

# ---------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------
CSV_FIELDS = ("table", "mode", "batch", "k", "new_tokens", "tokens_per_s", "decode_tokens_per_s", "ms_per_token_median",
              "ms_per_token_p10", "ms_per_token_p90", "first_token_ms_median", "peak_mem_mb", "kv_cache_mb",
              "single_user_tokens_per_s", "swap_ms_median")


def write_csv(report: dict, path: Path):
    import csv

    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in report["results"].values():
            w.writerow({"table": "modes", **r})
        for r in report.get("scaling", []):
            w.writerow({"table": "scaling", **r})


def _fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def print_report(report: dict):
    cfg = report["config"]
    print(f"\n{cfg['machine']['cpu']} x{cfg['machine']['cores']}  torch {cfg['torch']}  backend {cfg['backend']}  "
          f"load {cfg['machine']['load_average_start']} -> {cfg['machine']['load_average_end']}")
    print(f"{'mode':<14}{'B':>3}{'k':>4}{'N':>4}{'tok/s':>9}{'dec tok/s':>10}{'ms/tok med [p10, p90]':>25}"
          f"{'TTFT ms':>9}{'peak MB':>9}{'KV MB':>8}")
    for r in report["results"].values():
        if r["mode"] == "head-swap":
            print(f"{'head-swap':<14} {r['users']} users: replace median {r['swap_ms_median']:.4f} ms "
                  f"[{r['swap_ms_p10']:.4f}, {r['swap_ms_p90']:.4f}], "
                  f"next step uses it: {r['next_step_uses_new_head']}")
            continue
        spread = f"{r['ms_per_token_median']:.1f} [{r['ms_per_token_p10']:.1f}, {r['ms_per_token_p90']:.1f}]"
        print(f"{r['mode']:<14}{r['batch']:>3}{_fmt(r.get('k'), 'd'):>4}{r['new_tokens']:>4}{r['tokens_per_s']:>9.2f}"
              f"{_fmt(r['decode_tokens_per_s'], '.2f'):>10}{spread:>25}{_fmt(r['first_token_ms_median'], '.0f'):>9}"
              f"{r['peak_mem_mb']:>9.0f}{r['kv_cache_mb']:>8.2f}")
        if "single_user_tokens_per_s" in r:
            print(f"{'  1 user':<14}{r['batch']:>3}{r['k']:>4}{r['new_tokens']:>4}"
                  f"{r['single_user_tokens_per_s']:>9.2f}")
    bw = cfg["machine"]["read_bandwidth_gb_s"]
    print(f"\nweight reads per decode step (machine read bandwidth {bw:.1f} GB/s; KV reads excluded):")
    for r in report["results"].values():
        if r.get("weight_bytes_per_step"):
            print(f"  {r['mode']:<14}{r['weight_bytes_per_step'] / 1e6:>8.0f} MB  floor {r['floor_ms_per_step']:6.2f} ms/step"
                  f"  achieved {_fmt(r['weight_gb_s'])} GB/s = {_fmt(r['floor_fraction'] and 100 * r['floor_fraction'])}%"
                  " of the floor")
    print("\ntargets:")
    for name, e in {**report["ratios"], **report.get("vs_baseline", {})}.items():
        if "target" not in e:
            print(f"  ----  {name:<36} {e['value']:.3f} (no target for {e['dtype']} vs {e['baseline_dtype']})")
            continue
        extra = f"  (prefill-free {e['decode_only_value']:.3f})" if e.get("decode_only_value") else ""
        print(f"  {'PASS' if e['pass'] else 'FAIL'}  {name:<36} {e['value']!s:.6} {e['op']} {e['target']}{extra}")
    if report.get("rule_ratios"):
        print("other rules (tokens/s ratios):", ", ".join(f"{k} {v:.3f}" for k, v in report["rule_ratios"].items()))
    print("checks:", ", ".join(f"{k}: {v}" for k, v in report["checks"].items()))
    if report.get("scaling"):
        print("\nscaling (rgd-shared):")
        for r in report["scaling"]:
            print(f"  k={r['k']:<3} B={r['batch']:<3} {r['tokens_per_s']:8.2f} tok/s  "
                  f"{r['ms_per_token_median']:8.1f} ms/step"
                  f"  KV {r['kv_cache_mb']:.2f} MB")


def write_outputs(report: dict, json_path: Path):
    from benchmarks.plot_decode import plot

    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=1))
    write_csv(report, json_path.with_suffix(".csv"))
    plot(report, json_path.with_suffix(".png"))
