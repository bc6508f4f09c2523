"""The decode benchmark's modes (`python -m benchmarks.decode`): how each one calls the engine, HF or a baseline,
what it measures, and the weights it reads per step; RUNNERS is the registry decode.py runs from."""
from __future__ import annotations

import math
import time

import torch
from tqdm import tqdm

from benchmarks.baselines import args_kcopy, args_nocache, cache_bytes
from benchmarks.decode_harness import (Bench, Run, build_prompts, kv_bytes, measure, percentiles, random_bank, sync,
                                       weight_bytes)

# Weights each mode reads per decode step: (policy passes with its LM head, reward-trunk passes without one).
# rgd-shared scores its k candidates in the policy's own trunk (one pass over the weights for 1 + k rows);
# the separate-backbone modes add the reward trunk; logratio runs the policy twice (plain and conditioned).
WEIGHT_READS = {"hf-greedy": (1, 0), "engine-greedy": (1, 0), "rgd-shared": (1, 0), "rgd-mixed": (1, 0),
                "rgd-token": (1, 0), "rgd-bon-block": (1, 0), "rgd-logratio": (2, 0),
                "rgd-separate": (1, 1), "args-kcopy": (1, 1), "args-nocache": (1, 1)}


def add_weight_bandwidth(results: dict, bench: Bench, bandwidth_gb_s: float) -> None:
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


def measure_mode(bench: Bench, name: str, call, kv: int, **extra) -> dict:
    """measure() of one mode at the run's batch and token budget, with the mode's own fields added."""
    a = bench.args
    result = measure(name, call, batch=a.batch, new_tokens=a.new_tokens, args=a, device=bench.device, kv_formula=kv,
                     eos_ids=bench.eos_ids)
    result.update(extra)
    return result


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
    """rule_cfg: more GenerationConfig fields (the scoring rule's: rule, n_samples, block_size, seed; cuda_graph)."""
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
    return measure_mode(bench, "hf-greedy", hf_call(bench, a.batch), kv)


def run_engine_greedy(bench: Bench) -> dict:
    a, p = bench.args, bench.engine.policy
    kv = kv_bytes(p.config, a.batch, a.prompt_len + a.new_tokens + 1, p.dtype)  # capacity: +1 scratch slot
    call = engine_call(bench.engine, bench.prompts[:a.batch], cuda_graph=a.cuda_graph)
    return measure_mode(bench, "engine-greedy", call, kv)


def run_rgd(bench: Bench, name: str, engine, batch: int, k: int, users: list[str], repeats: int | None = None,
            first_token: bool = True, **rule_cfg) -> dict:
    """Reward-guided decode of `batch` rows; row i uses users[i]. KV: every model in the stream holds P + N + k.
    rule_cfg: more GenerationConfig fields (cuda_graph)."""
    a = bench.args
    bank = random_bank(engine, len(set(users)), a.seed)
    slots = bank.slots(users)
    models = [engine.policy] + ([engine.reward] if engine.reward is not None else [])
    kv = sum(kv_bytes(m.config, batch, a.prompt_len + a.new_tokens + k, m.dtype) for m in models)
    call = engine_call(engine, bench.prompts[:batch], k=k, bank=bank, slots=slots, weight=a.weight, **rule_cfg)
    result = measure(name, call, batch=batch, new_tokens=a.new_tokens, args=a, device=bench.device, kv_formula=kv,
                     eos_ids=bench.eos_ids, first_token=first_token, repeats=repeats)
    result.update(k=k, users=len(set(users)))
    return result


def run_rgd_shared(bench: Bench) -> dict:
    a = bench.args
    return run_rgd(bench, "rgd-shared", bench.engine, a.batch, a.k, ["u0"] * a.batch, cuda_graph=a.cuda_graph)


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
    return measure_mode(bench, "rgd-token", call, kv, k=a.k, rank=a.token_rank)


def run_rgd_logratio(bench: Bench) -> dict:
    """`logratio` rule: the policy conditioned on a --context-len-token profile before the prompt, its own cache."""
    a, p = bench.args, bench.engine.policy
    prompts = bench.prompts[:a.batch]
    context = build_prompts(bench.engine.tokenizer, a.batch + 1, a.context_len)[1:]  # other rows' text as profile
    conds = [c + x for c, x in zip(context, prompts)]
    kv = (kv_bytes(p.config, a.batch, a.prompt_len + a.new_tokens + 1, p.dtype)
          + kv_bytes(p.config, a.batch, a.context_len + a.prompt_len + a.new_tokens + 1, p.dtype))
    call = engine_call(bench.engine, prompts, k=a.k, weight=a.weight, cond_prompts=conds, rule="logratio")
    return measure_mode(bench, "rgd-logratio", call, kv, k=a.k, context_len=a.context_len)


def run_rgd_bon_block(bench: Bench) -> dict:
    """`bon-block` rule: N samples of M tokens per row, the best kept by u0's sequence-level head."""
    a, p = bench.args, bench.engine.policy
    bank = random_bank(bench.engine, 1, a.seed)
    kv = kv_bytes(p.config, a.batch * a.bon_samples, a.prompt_len + a.new_tokens + 1, p.dtype)  # N rows per row
    call = engine_call(bench.engine, bench.prompts[:a.batch], bank=bank, slots=bank.slots(["u0"] * a.batch),
                       weight=a.weight, rule="bon-block", n_samples=a.bon_samples, block_size=a.bon_block_size,
                       seed=a.seed)
    return measure_mode(bench, "rgd-bon-block", call, kv, n_samples=a.bon_samples, block_size=a.bon_block_size)


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


RUNNERS = {"hf-greedy": run_hf_greedy, "engine-greedy": run_engine_greedy, "rgd-shared": run_rgd_shared,
           "rgd-separate": run_rgd_separate, "args-kcopy": run_args_kcopy, "args-nocache": run_args_nocache,
           "rgd-mixed": run_rgd_mixed, "head-swap": run_head_swap, "rgd-token": run_rgd_token,
           "rgd-logratio": run_rgd_logratio, "rgd-bon-block": run_rgd_bon_block}
