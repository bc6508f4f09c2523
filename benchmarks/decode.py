"""Decode throughput: the engine (plain and reward-guided) against HF generate and published-style ARGS codes.

    python -m benchmarks.decode [--modes ...] [--json PATH] [--device cpu|cuda] [--model demo] [--scaling] ...

Every mode runs on the same model, prompts and settings, in one process. Per mode: one untimed check call
(output length, tokens, KV bytes, peak memory), `--warmup - 1` more untimed calls, then `--repeats` timed calls
with `--new-tokens` tokens and `--repeats` with 1 token (time to first token, to split off the prefill).
Writes JSON (config + results + ratios against the targets + checks), CSV and a PNG next to it, prints a table.

Timing is the wall time of one whole generate call (prefill included), as a user sees it. tokens/s counts
generated tokens across the batch; ms/token is wall time per decode step (per generated position, all rows in
parallel). decode_tokens_per_s excludes the prefill: B * (N - 1) / (median t_N - median t_1).
Rows always run to the token budget: the engine's EOS set is emptied and HF gets min_new_tokens = max_new_tokens
(vLLM's --ignore-eos); `eos_emitted` says whether an EOS id was generated anyway.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.baselines import args_kcopy, args_nocache, cache_bytes

MODES = ("hf-greedy", "engine-greedy", "rgd-shared", "rgd-separate", "args-kcopy", "args-nocache", "rgd-mixed",
         "head-swap", "rgd-token", "rgd-logratio", "rgd-bon-block")
# The other scoring rules (decoder.py), reported next to the ARGS modes as tokens/s relative to these modes.
RULE_MODES = ("rgd-token", "rgd-logratio", "rgd-bon-block")
RULE_BASES = ("engine-greedy", "rgd-shared")
NEEDS_REWARD_MODEL = {"rgd-separate", "args-kcopy", "args-nocache"}
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


def measure_read_bandwidth(device: torch.device, gib: float = 1.0, repeats: int = 5) -> float:
    """The machine's read bandwidth in GB/s: median time of summing a `gib` GiB fp32 tensor (a streaming
    reduction, as gpt-fast's roofline uses), after one untimed pass."""
    x = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32, device=device)
    x.sum()
    times = [timed(lambda _: x.sum(), 0, device) for _ in range(repeats)]
    return x.numel() * 4 / float(np.median(times)) / 1e9


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


# Weights each mode reads per decode step: (policy passes with its LM head, reward-trunk passes without one).
# rgd-shared scores its k candidates in the policy's own trunk (one pass over the weights for 1 + k rows);
# the separate-backbone modes add the reward trunk; logratio runs the policy twice (plain and conditioned).
WEIGHT_READS = {"hf-greedy": (1, 0), "engine-greedy": (1, 0), "rgd-shared": (1, 0), "rgd-mixed": (1, 0),
                "rgd-token": (1, 0), "rgd-bon-block": (1, 0), "rgd-logratio": (2, 0),
                "rgd-separate": (1, 1), "args-kcopy": (1, 1), "args-nocache": (1, 1)}


def add_weight_bandwidth(results: dict, bench: "Bench", bandwidth_gb_s: float) -> None:
    """Per mode: weight bytes read per decode step, the achieved weight-read GB/s (prefill-free decode rate) and
    its fraction of the measured machine bandwidth; the floor is bytes / bandwidth (KV-cache reads excluded)."""
    policy = weight_bytes(bench.engine.policy.hf_model)
    reward = weight_bytes(bench.separate.reward.hf_model, lm_head=False) \
        if any(m in results for m, (_, r) in WEIGHT_READS.items() if r) else 0
    for mode, r in results.items():
        if mode not in WEIGHT_READS:
            continue
        n_policy, n_reward = WEIGHT_READS[mode]
        nbytes = n_policy * policy + n_reward * reward
        r["weight_bytes_per_step"] = nbytes
        r["floor_ms_per_step"] = 1000 * nbytes / (bandwidth_gb_s * 1e9)
        rate = r.get("decode_tokens_per_s")
        r["weight_gb_s"] = nbytes * rate / r["batch"] / 1e9 if rate else None
        r["floor_fraction"] = r["weight_gb_s"] / bandwidth_gb_s if rate else None


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
# Calls: each returns call(n) -> Run
# ---------------------------------------------------------------------------------------------------------------
def hf_call(bench: Bench, batch: int):
    model, tok = bench.engine.policy.hf_model, bench.engine.tokenizer
    ids = bench.prompt_tensor(batch)
    mask = torch.ones_like(ids)

    @torch.inference_mode()
    def call(n: int) -> Run:
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=tok.pad_token_id, return_dict_in_generate=True)
        return Run(out.sequences[:, ids.shape[1]:].tolist(), cache_bytes(out.cache))

    return call


def engine_call(engine, prompts: list[list[int]], k: int = 1, bank=None, slots=None, weight: float = 0.0,
                cond_prompts: list[list[int]] | None = None, **rule_cfg):
    """rule_cfg: GenerationConfig fields of the scoring rule (rule, n_samples, block_size, seed)."""
    from rgd_engine import GenerationConfig

    guided = bank is not None or cond_prompts is not None
    weights = torch.full((len(prompts),), float(weight)) if guided else None

    def call(n: int) -> Run:
        cfg = GenerationConfig(max_new_tokens=n, k=k, ignore_eos=True, **rule_cfg)
        gens = engine.decoder.generate(prompts, cfg, bank=bank, slots=slots, weights=weights,
                                       cond_prompts=cond_prompts)
        return Run([g.token_ids for g in gens], gens[0].kv_bytes)

    return call


def baseline_call(fn, bench: Bench, batch: int, bank):
    """An ARGS baseline with the separate reward backbone and user u0's head from `bank`."""
    rm = bench.separate.reward
    w, b = bank.head("u0")
    ids = bench.prompt_tensor(batch)
    policy_hf = bench.engine.policy.hf_model

    def call(n: int) -> Run:
        out = fn(policy_hf, rm.base, w.to(bench.device), b, ids, n, bench.args.k, bench.args.weight)
        return Run(out.tokens.tolist(), out.kv_bytes)

    return call


# ---------------------------------------------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------------------------------------------
def run_hf_greedy(bench: Bench) -> dict:
    a, p = bench.args, bench.engine.policy
    kv = kv_bytes(p.config, a.batch, a.prompt_len + a.new_tokens - 1, p.dtype)  # the last token is never fed
    return measure("hf-greedy", hf_call(bench, a.batch), batch=a.batch, new_tokens=a.new_tokens, args=a,
                   device=bench.device, kv_formula=kv, eos_ids=bench.eos_ids)


def run_engine_greedy(bench: Bench) -> dict:
    a, p = bench.args, bench.engine.policy
    kv = kv_bytes(p.config, a.batch, a.prompt_len + a.new_tokens + 1, p.dtype)  # capacity: +1 scratch slot
    call = engine_call(bench.engine, bench.prompts[:a.batch])
    return measure("engine-greedy", call, batch=a.batch, new_tokens=a.new_tokens, args=a, device=bench.device,
                   kv_formula=kv, eos_ids=bench.eos_ids)


def run_rgd(bench: Bench, name: str, engine, batch: int, k: int, users: list[str], repeats: int | None = None,
            first_token: bool = True) -> dict:
    """Reward-guided decode of `batch` rows; row i uses users[i]. KV: every model in the stream holds P + N + k."""
    a = bench.args
    bank = random_bank(engine, len(set(users)), a.seed)
    slots = bank.slots(users)
    models = [engine.policy] + ([engine.reward] if engine.reward is not None else [])
    kv = sum(kv_bytes(m.config, batch, a.prompt_len + a.new_tokens + k, m.dtype) for m in models)
    call = engine_call(engine, bench.prompts[:batch], k=k, bank=bank, slots=slots, weight=a.weight)
    result = measure(name, call, batch=batch, new_tokens=a.new_tokens, args=a, device=bench.device, kv_formula=kv,
                     eos_ids=bench.eos_ids, first_token=first_token, repeats=repeats)
    result.update(k=k, users=len(set(users)))
    return result


def run_rgd_shared(bench: Bench) -> dict:
    a = bench.args
    return run_rgd(bench, "rgd-shared", bench.engine, a.batch, a.k, ["u0"] * a.batch)


def run_rgd_separate(bench: Bench) -> dict:
    a = bench.args
    return run_rgd(bench, "rgd-separate", bench.separate, a.batch, a.k, ["u0"] * a.batch)


def run_baseline(bench: Bench, name: str, fn, new_tokens: int, kv: int) -> dict:
    """Measure one published-style ARGS baseline with the separate reward backbone and user u0's head."""
    a = bench.args
    call = baseline_call(fn, bench, a.batch, random_bank(bench.separate, 1, a.seed))
    result = measure(name, call, batch=a.batch, new_tokens=new_tokens, args=a, device=bench.device, kv_formula=kv,
                     eos_ids=bench.eos_ids)
    result["k"] = a.k
    return result


def run_args_kcopy(bench: Bench) -> dict:
    a, p, rm = bench.args, bench.engine.policy, bench.separate.reward
    n = a.new_tokens
    kv = (kv_bytes(p.config, a.batch, a.prompt_len + n - 1, p.dtype)
          + kv_bytes(rm.config, a.batch * a.k, a.prompt_len + n, rm.dtype))  # k copies of every prefix
    return run_baseline(bench, "args-kcopy", args_kcopy, n, kv)


def run_args_nocache(bench: Bench) -> dict:
    a, p = bench.args, bench.engine.policy
    n = a.nocache_new_tokens  # slow: fewer tokens; ms/token is what compares
    kv = kv_bytes(p.config, a.batch, a.prompt_len + n - 1, p.dtype)  # the policy's cache only
    return run_baseline(bench, "args-nocache", args_nocache, n, kv)


def run_rgd_mixed(bench: Bench) -> dict:
    """B rows with B distinct users vs the same batch with one user (shared trunk)."""
    a, B = bench.args, bench.args.mixed_batch
    # No prefill split: it would cost 2 x repeats extra B-row prefills, and only the two batches' ratio matters.
    mixed = run_rgd(bench, "rgd-mixed", bench.engine, B, a.k, [f"u{i}" for i in range(B)], first_token=False)
    single = run_rgd(bench, "rgd-mixed-single-user", bench.engine, B, a.k, ["u0"] * B, first_token=False)
    mixed.update(single_user_tokens_per_s=single["tokens_per_s"],
                 single_user_ms_per_token_median=single["ms_per_token_median"],
                 single_user_tokens=single["tokens"])
    return mixed


def run_head_swap(bench: Bench) -> dict:
    """Median time of `bank.replace` in a bank of --swap-users users, and proof that the next step uses it."""
    a, engine = bench.args, bench.engine
    d = engine.hidden_size
    t0 = time.perf_counter()
    bank = random_bank(engine, a.swap_users, a.seed)
    build_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(a.seed + 1)
    heads = (torch.randn(a.swap_repeats, d, generator=g) / math.sqrt(d)).to(bench.device)  # [R, d]
    who = torch.randint(0, a.swap_users, (a.swap_repeats,), generator=g).tolist()
    times = []
    for i in tqdm(range(a.swap_repeats), desc="head-swap", leave=False):
        sync(bench.device)
        t = time.perf_counter()
        bank.replace(f"u{who[i]}", heads[i], 0.5)
        sync(bench.device)
        times.append(1000 * (time.perf_counter() - t))
    ms = percentiles(times)
    return {"mode": "head-swap", "users": a.swap_users, "hidden_size": d, "swaps": a.swap_repeats,
            "build_s": build_s, "swap_ms_median": ms["median"], "swap_ms_p10": ms["p10"], "swap_ms_p90": ms["p90"],
            "next_step_uses_new_head": next_step_uses_new_head(bench, bank, f"u{who[-1]}"),
            "batch": 1, "new_tokens": None, "tokens_per_s": None, "ms_per_token_median": None,
            "ms_per_token_p10": None, "ms_per_token_p90": None, "peak_mem_mb": None, "kv_cache_mb": None}


def next_step_uses_new_head(bench: Bench, bank, user: str) -> bool:
    """Decode one step, swap `user`'s head to (2w, 2b + 1), decode again: rewards must be exactly 2r + 1."""
    from rgd_engine import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=1, k=bench.args.k, return_scores=True, ignore_eos=True)
    slots, weights = bank.slots([user]), torch.tensor([bench.args.weight])

    def step():
        gen = bench.engine.decoder.generate(bench.prompts[:1], cfg, bank=bank, slots=slots, weights=weights)[0]
        return gen.steps[0]

    before = step()
    w, b = bank.head(user)
    bank.replace(user, 2 * w, 2 * b + 1)
    after = step()
    want = 2 * torch.tensor(before["reward"]) + 1
    return after["candidates"] == before["candidates"] and torch.allclose(torch.tensor(after["reward"]), want,
                                                                          rtol=1e-4, atol=1e-4)


def random_token_bank(engine, rank: int, seed: int):
    """Token-level bank with user u0: P, Q ~ N(0, 1/d), so e_v . (P^T Q h) is of order 1 like the ARGS heads."""
    d = engine.hidden_size
    g = torch.Generator().manual_seed(seed)
    bank = engine.new_token_bank(rank, capacity=1)
    bank.add("u0", torch.randn(rank, d, generator=g) / math.sqrt(d), torch.randn(rank, d, generator=g) / math.sqrt(d))
    return bank


def run_rgd_token(bench: Bench) -> dict:
    """`token` rule, shared trunk: one 1-token forward per step, the k candidates' embedding rows only."""
    a, p = bench.args, bench.engine.policy
    bank = random_token_bank(bench.engine, a.token_rank, a.seed)
    kv = kv_bytes(p.config, a.batch, a.prompt_len + a.new_tokens + 1, p.dtype)
    call = engine_call(bench.engine, bench.prompts[:a.batch], k=a.k, bank=bank, slots=bank.slots(["u0"] * a.batch),
                       weight=a.weight, rule="token")
    result = measure("rgd-token", call, batch=a.batch, new_tokens=a.new_tokens, args=a, device=bench.device,
                     kv_formula=kv, eos_ids=bench.eos_ids)
    result.update(k=a.k, rank=a.token_rank)
    return result


def run_rgd_logratio(bench: Bench) -> dict:
    """`logratio` rule: the policy conditioned on a --context-len-token profile before the prompt, its own cache."""
    a, p = bench.args, bench.engine.policy
    prompts = bench.prompts[:a.batch]
    context = build_prompts(bench.engine.tokenizer, a.batch + 1, a.context_len)[1:]  # other rows' text as profile
    conds = [c + x for c, x in zip(context, prompts)]
    kv = (kv_bytes(p.config, a.batch, a.prompt_len + a.new_tokens + 1, p.dtype)
          + kv_bytes(p.config, a.batch, a.context_len + a.prompt_len + a.new_tokens + 1, p.dtype))
    call = engine_call(bench.engine, prompts, k=a.k, weight=a.weight, cond_prompts=conds, rule="logratio")
    result = measure("rgd-logratio", call, batch=a.batch, new_tokens=a.new_tokens, args=a, device=bench.device,
                     kv_formula=kv, eos_ids=bench.eos_ids)
    result.update(k=a.k, context_len=a.context_len)
    return result


def run_rgd_bon_block(bench: Bench) -> dict:
    """`bon-block` rule: N samples of M tokens per row, the best kept by u0's sequence-level head."""
    a, p = bench.args, bench.engine.policy
    bank = random_bank(bench.engine, 1, a.seed)
    kv = kv_bytes(p.config, a.batch * a.bon_samples, a.prompt_len + a.new_tokens + 1, p.dtype)  # N rows per row
    call = engine_call(bench.engine, bench.prompts[:a.batch], bank=bank, slots=bank.slots(["u0"] * a.batch),
                       weight=a.weight, rule="bon-block", n_samples=a.bon_samples, block_size=a.bon_block_size,
                       seed=a.seed)
    result = measure("rgd-bon-block", call, batch=a.batch, new_tokens=a.new_tokens, args=a, device=bench.device,
                     kv_formula=kv, eos_ids=bench.eos_ids)
    result.update(n_samples=a.bon_samples, block_size=a.bon_block_size)
    return result


def rule_ratios(results: dict) -> dict:
    """tokens/s of each other-rule mode relative to engine-greedy and rgd-shared (no targets: information)."""
    return {f"{m}_vs_{b}": results[m]["tokens_per_s"] / results[b]["tokens_per_s"]
            for m in RULE_MODES for b in RULE_BASES if m in results and b in results}


RUNNERS = {"hf-greedy": run_hf_greedy, "engine-greedy": run_engine_greedy, "rgd-shared": run_rgd_shared,
           "rgd-separate": run_rgd_separate, "args-kcopy": run_args_kcopy, "args-nocache": run_args_nocache,
           "rgd-mixed": run_rgd_mixed, "head-swap": run_head_swap, "rgd-token": run_rgd_token,
           "rgd-logratio": run_rgd_logratio, "rgd-bon-block": run_rgd_bon_block}


def run_scaling(bench: Bench) -> list[dict]:
    """tokens/s of rgd-shared vs k (batch 1) and vs batch (k = --k); --scaling-repeats timed calls, no prefill split."""
    a = bench.args
    # (k, 1) for every k, then (--k, B) for every batch; (--k, 1) is measured once.
    points = [(k, 1) for k in a.scaling_k] + [(a.k, B) for B in a.scaling_batch if (a.k, B) not in
                                              [(k, 1) for k in a.scaling_k]]
    rows = []
    for k, B in tqdm(points, desc="scaling"):
        r = run_rgd(bench, "rgd-shared", bench.engine, B, k, ["u0"] * B, repeats=a.scaling_repeats,
                    first_token=False)
        rows.append({key: r[key] for key in ("mode", "k", "batch", "new_tokens", "repeats", "tokens_per_s",
                                             "ms_per_token_median", "ms_per_token_p10", "ms_per_token_p90",
                                             "peak_mem_mb", "kv_cache_mb")})
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Report: ratios, checks, config
# ---------------------------------------------------------------------------------------------------------------
def _passes(value, op: str, target) -> bool:
    return {">=": value >= target, "<=": value <= target, "<": value < target, "==": value == target}[op]


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
    config["machine"]["read_bandwidth_gb_s"] = measure_read_bandwidth(bench.device)
    results = {}
    for mode in args.modes:
        results[mode] = RUNNERS[mode](bench)
    report = {"config": config, "results": results}
    if args.scaling:
        report["scaling"] = run_scaling(bench)
    config["machine"]["load_average_end"] = list(os.getloadavg())
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
