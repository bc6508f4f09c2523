"""`rgd-eval run`: the whole study, stage by stage, each stage cached so an interrupted run resumes.

Stages: data -> base-policy greedy outputs (Pref-LaMP rejected texts) -> reward features h(x o y) (and the
per-token prefix states for token-level heads) -> every method x variant fits heads -> RM accuracy -> one
candidate tree per test query response (plus one forward of the profile-conditioned prompt for `logratio`) ->
policy accuracy for every (rule, method, variant, w) -> generation on test queries (zero-shot, ICL, each rule per
method and w, bon-block per method) -> ROUGE -> Kendall tau -> results.json, samples.jsonl, LaMP-format
predictions, head banks, report.md and plots.

Rules (decoder.py): `args` uses the sequence-level methods (global, per-user, lore, vpl); `token` the token-level
methods (token-global, token-per-user, GenARM loss); `logratio` has one reward, the policy conditioned on the
user's BM25-retrieved profile items (method `logratio-icl`: log pi(.|ICL prompt) - log pi(.|zero-shot prompt));
`bon-block` keeps the best of N sampled blocks by each sequence-level method's heads and is judged on generation
only. Generation systems are `rgd/{method}/w={w}` (method names say the rule) and `bon-block/{method}`.

Every prompt is the task's zero-shot prompt (input + answer cue) except ICL's. The reward input of a response
is prompt tokens + tokens of " " + response, the same format the decoder produces after the answer cue.
Generation for RGD uses, per method, the variant with the best RM accuracy on the *train* users' held-out
query pairs (validation); test pairs are only evaluated.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

import torch
from tqdm import tqdm

from .io import cached_stage, write_json, write_text
from .lamp import DEFAULT_LAMP_DIR, LaMPDataset, load_lamp
from .metrics import accuracy_from_rewards, kendall_tau, rm_accuracy, score_generation
from .preferences import build_pref_lamp, features_by_user, generation_inputs
from .prompts import icl_prompt, zero_shot_prompt
from .report import write_report
from .results import data_summary, make_results, rm_entry, w_key
from .reward_models import METHODS, make_method, variant_name, variants
from .token_models import TOKEN_METHODS, TokenPairFeatures, TokenSeq, make_token_method, token_rm_accuracy, token_variants
from .tasks import canonical_task

log = logging.getLogger("rgd_eval")
CHUNK = 64  # prompts per cached generation / feature chunk: the unit of resumption
RULES = ("args", "token", "logratio", "bon-block")
LOGRATIO_METHOD = "logratio-icl"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="demo", help="policy: 'demo', an HF model directory or a .gguf file")
    p.add_argument("--reward-model", default=None, help="separate reward backbone (default: shared trunk)")
    p.add_argument("--data", default=str(DEFAULT_LAMP_DIR), help="LaMP-format folder (default: shipped LaMP-4 subset)")
    p.add_argument("--tasks", nargs="*", default=None, help="tasks to accept (e.g. LaMP-4); default: the data's task")
    p.add_argument("--rules", nargs="*", default=list(RULES), choices=list(RULES),
                   help="decoding rules to compare (default: all)")
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS),
                   help="sequence-level RM methods (rules args and bon-block)")
    p.add_argument("--token-methods", nargs="*", default=list(TOKEN_METHODS), choices=list(TOKEN_METHODS),
                   help="token-level RM methods (rule token)")
    p.add_argument("--bon-methods", nargs="*", default=["per-user"], choices=list(METHODS),
                   help="sequence-level methods whose heads bon-block uses (each one of --methods)")
    p.add_argument("--bon-samples", type=int, default=4, help="bon-block: samples N per block")
    p.add_argument("--bon-block-size", type=int, default=8, help="bon-block: tokens M per block")
    p.add_argument("--bon-temperature", type=float, default=0.7, help="bon-block: sampling temperature of pi")
    p.add_argument("--weights", default="0,0.5,1,2,4", help="comma-separated reward weights w (policy accuracy)")
    p.add_argument("--gen-weights", default="0.5,2",
                   help="the weights w > 0 generation runs for every guided method (each one of --weights; "
                        "generation is the expensive stage)")
    p.add_argument("-k", type=int, default=10, help="candidates per step (top-k of the policy)")
    p.add_argument("--limit", type=int, default=None, help="testing: keep the first N users of each split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--output-dir", default="runs/rgd-eval", help="run folder; rerunning resumes from its cache")
    p.add_argument("--rejected", default="policy", choices=["policy", "other-user"],
                   help="rejected response of a pair: the base policy's greedy output, or another user's output")
    p.add_argument("--max-profile-pairs", type=int, default=12, help="newest profile items per user used as pairs")
    p.add_argument("--min-profile-pairs", type=int, default=4)
    p.add_argument("--icl-n", type=int, default=4, help="BM25-retrieved profile items in the ICL prompt")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for ROUGE CIs")
    p.add_argument("--policy-acc-strict", action="store_true",
                   help="policy accuracy: a gold token outside the top-k gives -inf (default: it joins C_t)")
    p.add_argument("--policy-acc-reduce", default="mean", choices=["mean", "sum"],
                   help="policy accuracy: S(y) is the mean (default) or the sum of log pi~(y_t)")
    p.add_argument("--chat", action="store_true", help="wrap prompts in the model's chat template")
    p.add_argument("--backend", default=None, help="kernel backend (default: $RGD_BACKEND or auto)")


# ---- small helpers ----------------------------------------------------------------------------------------

def parse_weights(text: str) -> list[float]:
    try:
        ws = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"--weights must be comma-separated numbers, got {text!r}") from None
    if not ws or any(w < 0 for w in ws):
        raise ValueError(f"--weights needs at least one non-negative weight, got {text!r}")
    return ws


def data_fingerprint(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.glob("*.json")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def limit_users(ds: LaMPDataset, n: int | None) -> LaMPDataset:
    if n is None:
        return ds
    splits = {}
    for split, qs in ds.splits.items():
        keep = sorted({q.user_id for q in qs})[:n]
        splits[split] = [q for q in qs if q.user_id in keep]
    return LaMPDataset(task=ds.task, root=ds.root, splits=splits)


def response_ids(engine, text: str) -> list[int]:
    """Tokens of a response as the decoder emits it after the answer cue (leading space)."""
    return engine.tokenizer(" " + text.strip(), add_special_tokens=False)["input_ids"]


def chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield i // size, items[i:i + size]


def generate_texts(engine, run_dir, name: str, key: dict, rows: list[tuple[str, str, str | None]], gen_cfg,
                   bank=None, chat=False, weight: float = 0.0, conds: dict[str, str] | None = None,
                   **rule_cfg) -> dict[str, str]:
    """rows: (id, prompt, user or None) -> {id: continuation}. Cached per chunk; batches sorted by length.
    conds: id -> profile-conditioned prompt (rule logratio); rule_cfg: GenerationConfig fields (rule, ...)."""
    rows = sorted(rows, key=lambda r: (len(r[1]), r[0]))
    out: dict[str, str] = {}
    bar = tqdm(total=len(rows), desc=name, unit="prompt", leave=False)
    for c, chunk in chunks(rows, CHUNK):
        def run_chunk(chunk=chunk):
            texts = {}
            for _, batch in chunks(chunk, gen_cfg["batch_size"]):
                gens = engine.generate([p for _, p, _ in batch], users=[u for _, _, u in batch], heads=bank,
                                       chat=chat, max_new_tokens=gen_cfg["max_new_tokens"], stop=("\n",),
                                       k=gen_cfg["k"], weight=weight,
                                       cond_prompts=[conds[i] for i, _, _ in batch] if conds else None, **rule_cfg)
                texts.update({i: g.text.strip() for (i, _, _), g in zip(batch, gens)})
            return texts
        out.update(cached_stage(run_dir, f"{name}-{c}", {**key, **rule_cfg, "ids": [r[0] for r in chunk]}, run_chunk))
        bar.update(len(chunk))
    bar.close()
    return out


def versions() -> dict:
    out = {}
    for pkg in ("rgd-engine", "torch", "transformers", "rouge-score", "scipy", "numpy", "rank-bm25"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def git_hash() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ---- stages -----------------------------------------------------------------------------------------------

def compute_features(engine, run_dir, key, pairs, prompts) -> tuple[torch.Tensor, torch.Tensor]:
    """h(x o y_w), h(x o y_l) for every pair -> two [P, d] tensors (cached per chunk)."""
    chosen, rejected = [], []
    for c, chunk in tqdm(list(chunks(pairs, CHUNK)), desc="features", unit="chunk", leave=False):
        def run_chunk(chunk=chunk):
            x = [engine.encode(prompts[p.pair_id]) for p in chunk]
            hw = engine.features(x, [response_ids(engine, p.chosen) for p in chunk])
            hl = engine.features(x, [response_ids(engine, p.rejected) for p in chunk])
            return {"chosen": hw, "rejected": hl}
        got = cached_stage(run_dir, f"features-{c}", {**key, "ids": [p.pair_id for p in chunk]}, run_chunk,
                           fmt="torch")
        chosen.append(got["chosen"])
        rejected.append(got["rejected"])
    return torch.cat(chosen), torch.cat(rejected)


def compute_token_features(engine, run_dir, key, pairs, prompts) -> dict[str, tuple[TokenSeq, TokenSeq]]:
    """Token-level reward features of every pair: {pair_id: (chosen, rejected)} as TokenSeq(h = prefix states,
    e = the reward backbone's output-embedding rows of the response tokens). States cached per chunk."""
    from rgd_engine.features import prefix_states

    emb = engine.backbone.lm_head_weight.detach().float().cpu()  # [V, d]
    out = {}
    for c, chunk in tqdm(list(chunks(pairs, CHUNK)), desc="token features", unit="chunk", leave=False):
        def run_chunk(chunk=chunk):
            x = [engine.encode(prompts[p.pair_id]) for p in chunk]
            ys = [response_ids(engine, p.chosen) for p in chunk] + [response_ids(engine, p.rejected) for p in chunk]
            return {"h": prefix_states(engine.backbone, x + x, ys), "ids": [torch.tensor(y) for y in ys]}
        got = cached_stage(run_dir, f"token-features-{c}", {**key, "ids": [p.pair_id for p in chunk]}, run_chunk,
                           fmt="torch")
        n = len(chunk)
        for i, p in enumerate(chunk):
            out[p.pair_id] = tuple(TokenSeq(got["h"][j], emb[got["ids"][j]]) for j in (i, n + i))
    return out


def compute_candidate_states(engine, run_dir, key, pairs, prompts, k, backend, cond_prompts=None):
    """One teacher-forced candidate tree per (pair, chosen|rejected) -> {pair_id: (cs_chosen, cs_rejected)}.
    cond_prompts: pair_id -> profile-conditioned prompt (adds log pi_u at the candidates, rule logratio)."""
    from rgd_engine.policy_accuracy import CandidateStates, candidate_states

    fields = ("logprob", "states", "gold_index", "ids", "prefix", "cond_logprob")
    out = {}
    for c, chunk in tqdm(list(chunks(pairs, 16)), desc="policy trees", unit="chunk", leave=False):
        def run_chunk(chunk=chunk):
            res = {}
            for p in chunk:
                x = engine.encode(prompts[p.pair_id])
                cond = engine.encode(cond_prompts[p.pair_id]) if cond_prompts else None
                for side, text in (("chosen", p.chosen), ("rejected", p.rejected)):
                    cs = candidate_states(engine.policy, engine.backbone, x, response_ids(engine, text), k, backend,
                                          cond_prompt_ids=cond)
                    res[f"{p.pair_id}|{side}"] = {f: getattr(cs, f) for f in fields if getattr(cs, f) is not None}
            return res
        got = cached_stage(run_dir, f"trees-{c}", {**key, "k": k, "ids": [p.pair_id for p in chunk],
                                                   "cond": [cond_prompts[p.pair_id] for p in chunk] if cond_prompts else None},
                           run_chunk, fmt="torch")
        for p in chunk:
            out[p.pair_id] = tuple(CandidateStates(**{f: got[f"{p.pair_id}|{s}"].get(f) for f in fields})
                                   for s in ("chosen", "rejected"))
    return out


def policy_accuracies(trees, pairs, cfgs: list[str], score_fn, weights: list[float]) -> dict[str, dict]:
    """Policy accuracy of every configuration at every w. score_fn(cs, user) -> S(y) [len(cfgs), Nw]."""
    from rgd_engine.policy_accuracy import pair_accuracy

    s_w, s_l = [], []
    for p in pairs:
        cw, cl = trees[p.pair_id]
        s_w.append(score_fn(cw, p.user_id))  # [C, Nw]
        s_l.append(score_fn(cl, p.user_id))
    acc = pair_accuracy(torch.stack(s_w), torch.stack(s_l))  # accuracy [C, Nw]
    return {c: {w: float(acc["accuracy"][i, j]) for j, w in enumerate(weights)} for i, c in enumerate(cfgs)}


def sequence_score_fn(heads_by_cfg: dict[str, dict], wt, strict, reduce):
    """args rule: heads_by_cfg cfg -> {user: (w, b)}."""
    from rgd_engine.policy_accuracy import sequence_scores

    cfgs = list(heads_by_cfg)

    def fn(cs, user):
        W = torch.stack([heads_by_cfg[c][user][0].float() for c in cfgs])  # [C, d]
        b = torch.tensor([float(heads_by_cfg[c][user][1]) for c in cfgs])  # [C]
        return sequence_scores(cs, W, b, wt, strict=strict, reduce=reduce)
    return fn


def token_score_fn(heads_by_cfg: dict[str, dict], emb, wt, strict, reduce):
    """token rule: heads_by_cfg cfg -> {user: (P [r, d], Q [r, d])}; ranks may differ between configurations."""
    from rgd_engine.policy_accuracy import token_sequence_scores

    def fn(cs, user):
        return torch.cat([token_sequence_scores(cs, emb, heads[user][0][None], heads[user][1][None], wt,
                                                strict=strict, reduce=reduce) for heads in heads_by_cfg.values()])
    return fn


def logratio_rm_accuracy(trees, pairs) -> dict:
    """RM accuracy of the logratio reward R_u(y) = sum_t log pi(y_t | c_u o x o y<t) - log pi(y_t | x o y<t)."""
    rewards: dict[str, tuple[list, list]] = {}
    for p in pairs:
        r = [float((cs.cond_logprob[:, -1].double() - cs.logprob[:, -1].double()).sum()) for cs in trees[p.pair_id]]
        rewards.setdefault(p.user_id, ([], []))
        rewards[p.user_id][0].append(r[0])
        rewards[p.user_id][1].append(r[1])
    return accuracy_from_rewards(rewards)


def token_features_by_user(pairs, feats: dict) -> dict[str, TokenPairFeatures]:
    by_user: dict[str, tuple[list, list]] = {}
    for p in pairs:
        c, r = feats[p.pair_id]
        by_user.setdefault(p.user_id, ([], []))
        by_user[p.user_id][0].append(c)
        by_user[p.user_id][1].append(r)
    return {u: TokenPairFeatures(c, r) for u, (c, r) in by_user.items()}


def run(args) -> int:
    from rgd_engine import Engine, EngineConfig, HeadBank
    from rgd_engine.kernels import requested_backend, resolve_backend

    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    t0 = time.time()
    run_dir = Path(args.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    weights = parse_weights(args.weights)
    gen_weights = [w for w in parse_weights(args.gen_weights) if w != 0]  # w = 0 is the zero-shot system
    if not set(gen_weights) <= set(weights):
        raise SystemExit(f"rgd-eval: --gen-weights {gen_weights} must be among --weights {weights}")
    rules = list(dict.fromkeys(args.rules))
    if not rules:
        raise SystemExit("rgd-eval: --rules needs at least one rule")
    if "bon-block" in rules and not set(args.bon_methods) <= set(args.methods):
        raise SystemExit(f"rgd-eval: --bon-methods {args.bon_methods} must be among --methods {args.methods}")
    torch.manual_seed(args.seed)

    ds = limit_users(load_lamp(args.data), args.limit)
    if args.tasks and ds.task not in {canonical_task(t) for t in args.tasks}:
        raise SystemExit(f"rgd-eval: data {args.data} is {ds.task}, not one of --tasks {args.tasks}")
    task = ds.task
    engine = Engine.from_config(EngineConfig(model=args.model, reward_model=args.reward_model, device=args.device,
                                             dtype=args.dtype), backend=args.backend)
    backend = resolve_backend(args.backend or requested_backend(), engine.policy.device.type)
    base_key = {"data": data_fingerprint(Path(args.data)), "limit": args.limit, "model": args.model,
                "reward_model": args.reward_model, "dtype": args.dtype, "chat": args.chat}
    gen_cfg = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "k": args.k}

    # 1. Pref-LaMP: rejected = the base policy's greedy output for the same input
    inputs = generation_inputs(ds, args.max_profile_pairs)
    prompts = {pid: zero_shot_prompt(task, text) for pid, text in inputs.items()}
    policy_outputs = None
    if args.rejected == "policy":
        policy_outputs = generate_texts(engine, run_dir, "policy-outputs", {**base_key, **gen_cfg},
                                        [(pid, prompts[pid], None) for pid in sorted(prompts)], gen_cfg,
                                        chat=args.chat)
    pref = build_pref_lamp(ds, args.rejected, policy_outputs, seed=args.seed,
                           min_profile_pairs=args.min_profile_pairs, max_profile_pairs=args.max_profile_pairs)

    # 2. reward features of every pair, grouped by split / kind / user
    feat_key = {**base_key, "rejected": args.rejected, "seed": args.seed, "gen": gen_cfg}
    hw, hl = compute_features(engine, run_dir, feat_key, pref.pairs, prompts)
    row = {p.pair_id: i for i, p in enumerate(pref.pairs)}

    def feats(split, kind):
        sel = pref.select(split, kind)
        idx = torch.tensor([row[p.pair_id] for p in sel], dtype=torch.long)
        return features_by_user(sel, hw[idx], hl[idx])

    train_prof, train_query = feats("train", "profile"), feats("train", "query")
    test_prof, test_query = feats("test", "profile"), feats("test", "query")

    # 3. every method x variant: heads for train users (validation) and test users (evaluation)
    seq_methods = args.methods if {"args", "bon-block"} & set(rules) else []
    fitted = {}
    for name in tqdm(seq_methods, desc="reward models", unit="method", leave=False):
        for hp in variants(name):
            m = make_method(name, hp).fit(train_prof, seed=args.seed)
            fitted[(name, variant_name(hp))] = (hp, m.heads_for(train_prof), m.heads_for(test_prof))
    tok_fitted, tok = {}, {}
    if "token" in rules:
        tf = compute_token_features(engine, run_dir, feat_key, pref.pairs, prompts)
        tok = {(split, kind): token_features_by_user(pref.select(split, kind), tf)
               for split in ("train", "test") for kind in ("profile", "query")}
        for name in tqdm(args.token_methods, desc="token reward models", unit="method", leave=False):
            for hp in token_variants(name):
                m = make_token_method(name, hp).fit(tok["train", "profile"], seed=args.seed)
                tok_fitted[(name, variant_name(hp))] = (hp, m.heads_for(tok["train", "profile"]),
                                                        m.heads_for(tok["test", "profile"]))

    # 4. policy accuracy on the test users' query pairs, all configurations from one tree per response
    test_pairs = pref.select("test", "query")
    test_users = sorted(ds.users("test"))
    profiles = {u: ds.profile("test", u) for u in test_users}
    pair_conds = ({p.pair_id: icl_prompt(task, inputs[p.pair_id], profiles[p.user_id], n=args.icl_n) for p in test_pairs}
                  if "logratio" in rules else None)
    trees = compute_candidate_states(engine, run_dir, feat_key, test_pairs, prompts, args.k, args.backend, pair_conds)
    wt = torch.tensor(weights, dtype=torch.float64)
    strict, reduce = args.policy_acc_strict, args.policy_acc_reduce
    pol = {}
    if "args" in rules:
        cfg_heads = {f"{n}/{v}": heads_test for (n, v), (_, _, heads_test) in fitted.items()}
        pol.update(policy_accuracies(trees, test_pairs, list(cfg_heads), sequence_score_fn(cfg_heads, wt, strict, reduce),
                                     weights))
    if "token" in rules:
        cfg_heads = {f"{n}/{v}": heads_test for (n, v), (_, _, heads_test) in tok_fitted.items()}
        emb = engine.backbone.lm_head_weight.detach().float().cpu()
        pol.update(policy_accuracies(trees, test_pairs, list(cfg_heads),
                                     token_score_fn(cfg_heads, emb, wt, strict, reduce), weights))

    reward_models: dict[str, dict] = {}
    selected: dict[str, str] = {}
    rows = [("args", n, v, hp, tr, te, rm_accuracy) for (n, v), (hp, tr, te) in fitted.items()] + \
        [("token", n, v, hp, tr, te, token_rm_accuracy) for (n, v), (hp, tr, te) in tok_fitted.items()]
    for rule, name, vname, hp, heads_train, heads_test, acc_fn in rows:
        feats_test = test_query if rule == "args" else tok["test", "query"]
        feats_val = train_query if rule == "args" else tok["train", "query"]
        test_acc = acc_fn(heads_test, feats_test)
        entry = rm_entry(hp, test_acc, pol.get(f"{name}/{vname}", {}))
        entry["rule"] = rule
        entry["rm_accuracy_validation"] = acc_fn(heads_train, feats_val)["overall"]["accuracy"]
        entry["rm_accuracy_per_user"] = test_acc["per_user"]
        reward_models.setdefault(name, {})[vname] = entry
        best = selected.get(name)
        if best is None or entry["rm_accuracy_validation"] > reward_models[name][best]["rm_accuracy_validation"]:
            selected[name] = vname
    if "logratio" in rules:
        from rgd_engine.policy_accuracy import logratio_sequence_scores

        lr_acc = logratio_rm_accuracy(trees, test_pairs)
        lr_pol = policy_accuracies(trees, test_pairs, [LOGRATIO_METHOD],
                                   lambda cs, _: logratio_sequence_scores(cs, wt, strict=strict, reduce=reduce), weights)
        vname = f"icl_n={args.icl_n}"
        entry = rm_entry({"icl_n": args.icl_n}, lr_acc, lr_pol[LOGRATIO_METHOD])
        entry.update(rule="logratio", rm_accuracy_validation=None, rm_accuracy_per_user=lr_acc["per_user"])
        reward_models[LOGRATIO_METHOD] = {vname: entry}
        selected[LOGRATIO_METHOD] = vname
    for name in seq_methods if "args" not in rules else []:
        del reward_models[name]  # fitted for bon-block's heads only: it has no policy accuracy to report

    # 5. generation on the test users' queries
    queries = [q for u in test_users for q in ds.users("test")[u]]
    golds = {q.id: q.gold for q in queries}
    predictions: dict[str, dict[str, str]] = {}
    prompts_by_system: dict[str, dict[str, str]] = {}
    zs = {q.id: zero_shot_prompt(task, q.input) for q in queries}
    icl = {q.id: icl_prompt(task, q.input, profiles[q.user_id], n=args.icl_n) for q in queries}
    gen_key = {**feat_key, "icl_n": args.icl_n}
    predictions["zero-shot"] = generate_texts(engine, run_dir, "gen-zero-shot", gen_key,
                                              [(q.id, zs[q.id], None) for q in queries], gen_cfg, chat=args.chat)
    predictions["icl"] = generate_texts(engine, run_dir, "gen-icl", gen_key,
                                        [(q.id, icl[q.id], None) for q in queries], gen_cfg, chat=args.chat)
    prompts_by_system["zero-shot"], prompts_by_system["icl"] = zs, icl
    user_rows = [(q.id, zs[q.id], q.user_id) for q in queries]
    guided: list[tuple[str, object, dict]] = []  # (method, bank, rule config) per guided method
    for name in seq_methods:
        heads_test = fitted[(name, selected[name])][2]
        bank = engine.new_bank(capacity=max(1, len(test_users)))
        for u in test_users:
            w_u, b_u = heads_test[u]
            bank.add(u, w_u.float(), float(b_u))
        bank.save(run_dir / "heads" / f"{name}.safetensors")
        if "args" in rules:
            guided.append((name, bank, {"rule": "args"}))
        if "bon-block" in rules and name in args.bon_methods:
            system = f"bon-block/{name}"
            predictions[system] = generate_texts(
                engine, run_dir, f"gen-bon-{name}", {**gen_key, "variant": selected[name]},
                user_rows, gen_cfg, bank=bank, chat=args.chat, rule="bon-block", n_samples=args.bon_samples,
                block_size=args.bon_block_size, temperature=args.bon_temperature, seed=args.seed)
            prompts_by_system[system] = zs
    for name in args.token_methods if "token" in rules else []:
        heads_test = tok_fitted[(name, selected[name])][2]
        rank = next(iter(heads_test.values()))[0].shape[0]
        bank = engine.new_token_bank(rank=rank, capacity=max(1, len(test_users)))
        for u in test_users:
            bank.add(u, *heads_test[u])
        bank.save(run_dir / "heads" / f"{name}.safetensors")
        guided.append((name, bank, {"rule": "token"}))
    if "logratio" in rules:
        guided.append((LOGRATIO_METHOD, None, {"rule": "logratio"}))
    for name, bank, rule_cfg in guided:
        for w in gen_weights:
            system = f"rgd/{name}/w={w_key(w)}"
            predictions[system] = generate_texts(
                engine, run_dir, f"gen-rgd-{name}-{w_key(w)}", {**gen_key, "variant": selected[name], "w": w},
                user_rows, gen_cfg, bank=bank, chat=args.chat, weight=w,
                conds=icl if rule_cfg["rule"] == "logratio" else None, **rule_cfg)
            prompts_by_system[system] = zs

    # 6. scores, correlations, outputs
    generation = {s: score_generation(p, golds, n_boot=args.n_boot, seed=args.seed) for s, p in predictions.items()}
    config = {**{k: v for k, v in vars(args).items() if k != "func"}, "weights": weights, "gen_weights": gen_weights,
              "backend": backend, "selected_variants": selected,
              "versions": versions(), "git": git_hash(), "python": platform.python_version(),
              "machine": platform.machine(), "torch_threads": torch.get_num_threads(),
              "policy_accuracy_definition": "DESIGN.md: mean_t log softmax over C_t = top-k U {y_t} of "
                                            "log pi + w r_t(v); correct iff S(chosen) > S(rejected), ties wrong; "
                                            "r_t(v) per rule: args W_u.h(x o y<t o v) + b_u, token e_v.(P_u^T Q_u h_t), "
                                            "logratio log pi(v|ICL prompt o y<t) - log pi(v|x o y<t)",
              "rm_features": "args: final-norm hidden state at the last token of prompt + ' ' + response; token: "
                             "the states of every response prefix and the LM-head rows of the response tokens",
              "elapsed_s": None}
    data = data_summary(ds, pref, _build_stats(Path(args.data)))
    results = make_results(config, data, reward_models, generation)
    results["kendall"]["rouge1"] = rouge_kendall(results, selected)
    results["config"]["elapsed_s"] = round(time.time() - t0, 1)
    write_json(run_dir / "results.json", results)
    write_text(run_dir / "samples.jsonl", "".join(
        json.dumps({"system": s, "id": i, "user": q_user, "prompt": prompts_by_system[s][i], "prediction": p[i],
                    "gold": golds[i], **generation[s]["per_example"][i]}) + "\n"
        for s, p in predictions.items() for i, q_user in ((q.id, q.user_id) for q in queries)))
    write_text(run_dir / "pairs.jsonl", "".join(
        json.dumps({"pair_id": p.pair_id, "user": p.user_id, "split": p.split, "kind": p.kind,
                    "prompt": prompts[p.pair_id], "chosen": p.chosen, "rejected": p.rejected,
                    **({"cond_prompt": pair_conds[p.pair_id]} if pair_conds and p.pair_id in pair_conds else {})})
        + "\n"
        for p in pref.pairs))
    lamp_task = task.replace("-", "_")
    for s, p in predictions.items():
        write_json(run_dir / "predictions" / (s.replace("/", "_") + ".json"),
                   {"task": lamp_task, "golds": [{"id": i, "output": p[i]} for i in sorted(p)]})
    for path in write_report(results, run_dir):
        print(f"wrote {path}")
    print(f"rgd-eval: done in {results['config']['elapsed_s']} s -> {run_dir / 'results.json'}")
    return 0


def _build_stats(root: Path) -> dict | None:
    f = root / "build_stats.json"
    return json.loads(f.read_text()) if f.is_file() else None


def rouge_kendall(results: dict, selected: dict[str, str]) -> dict:
    """Kendall tau-b of ROUGE-1 vs RM accuracy and vs policy accuracy across RGD systems (method, w)."""
    rm, pol, r1 = [], [], []
    for system, g in results["generation"].items():
        if not system.startswith("rgd/"):
            continue
        _, method, wpart = system.split("/")
        e = results["reward_models"][method][selected[method]]
        rm.append(e["rm_accuracy"])
        pol.append(e["policy_accuracy"][wpart.split("=")[1]])
        r1.append(g["rouge1"]["mean"])
    if len(r1) < 2:
        return {"what": "fewer than 2 RGD systems", "n": len(r1)}
    return {"what": "one point per RGD system (method with its validation-selected variant, w > 0)",
            "rm_accuracy_vs_rouge1": kendall_tau(rm, r1), "policy_accuracy_vs_rouge1": kendall_tau(pol, r1)}
