"""`rgd-eval run`: the whole study, stage by stage, each stage cached so an interrupted run resumes.

Stages: data -> base-policy greedy outputs (Pref-LaMP rejected texts) -> reward features h(x o y) -> every
method x variant fits heads -> RM accuracy -> one candidate tree per test query response -> policy accuracy for
every (method, variant, w) -> generation on test queries (zero-shot, ICL, RGD per method and w) -> ROUGE ->
Kendall tau -> results.json, samples.jsonl, LaMP-format predictions, head banks, report.md and plots.

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
from .metrics import kendall_tau, rm_accuracy, score_generation
from .preferences import build_pref_lamp, features_by_user, generation_inputs
from .prompts import icl_prompt, zero_shot_prompt
from .report import write_report
from .results import data_summary, make_results, rm_entry, w_key
from .reward_models import METHODS, make_method, stack_heads, variant_name, variants
from .tasks import canonical_task

log = logging.getLogger("rgd_eval")
CHUNK = 64  # prompts per cached generation / feature chunk: the unit of resumption


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="demo", help="policy: 'demo', an HF model directory or a .gguf file")
    p.add_argument("--reward-model", default=None, help="separate reward backbone (default: shared trunk)")
    p.add_argument("--data", default=str(DEFAULT_LAMP_DIR), help="LaMP-format folder (default: shipped LaMP-4 subset)")
    p.add_argument("--tasks", nargs="*", default=None, help="tasks to accept (e.g. LaMP-4); default: the data's task")
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--weights", default="0,0.5,1,2,4", help="comma-separated ARGS weights w")
    p.add_argument("-k", type=int, default=10, help="ARGS candidates per step")
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
                   bank=None, chat=False, weight: float = 0.0) -> dict[str, str]:
    """rows: (id, prompt, user or None) -> {id: continuation}. Cached per chunk; batches sorted by length."""
    rows = sorted(rows, key=lambda r: (len(r[1]), r[0]))
    out: dict[str, str] = {}
    bar = tqdm(total=len(rows), desc=name, unit="prompt", leave=False)
    for c, chunk in chunks(rows, CHUNK):
        def run_chunk(chunk=chunk):
            texts = {}
            for _, batch in chunks(chunk, gen_cfg["batch_size"]):
                gens = engine.generate([p for _, p, _ in batch], users=[u for _, _, u in batch], heads=bank,
                                       chat=chat, max_new_tokens=gen_cfg["max_new_tokens"], stop=("\n",),
                                       k=gen_cfg["k"], weight=weight)
                texts.update({i: g.text.strip() for (i, _, _), g in zip(batch, gens)})
            return texts
        out.update(cached_stage(run_dir, f"{name}-{c}", {**key, "ids": [r[0] for r in chunk]}, run_chunk))
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


def compute_candidate_states(engine, run_dir, key, pairs, prompts, k, backend):
    """One teacher-forced candidate tree per (pair, chosen|rejected) -> {pair_id: (cs_chosen, cs_rejected)}."""
    from rgd_engine.policy_accuracy import CandidateStates, candidate_states

    out = {}
    for c, chunk in tqdm(list(chunks(pairs, 16)), desc="policy trees", unit="chunk", leave=False):
        def run_chunk(chunk=chunk):
            res = {}
            for p in chunk:
                x = engine.encode(prompts[p.pair_id])
                for side, text in (("chosen", p.chosen), ("rejected", p.rejected)):
                    cs = candidate_states(engine.policy, engine.backbone, x, response_ids(engine, text), k, backend)
                    res[f"{p.pair_id}|{side}"] = {"logprob": cs.logprob, "states": cs.states, "gold": cs.gold_index}
            return res
        got = cached_stage(run_dir, f"trees-{c}", {**key, "k": k, "ids": [p.pair_id for p in chunk]}, run_chunk,
                           fmt="torch")
        for p in chunk:
            out[p.pair_id] = tuple(CandidateStates(got[f"{p.pair_id}|{s}"]["logprob"], got[f"{p.pair_id}|{s}"]["states"],
                                                   got[f"{p.pair_id}|{s}"]["gold"]) for s in ("chosen", "rejected"))
    return out


def policy_accuracies(trees, pairs, heads_by_cfg: dict[str, dict], weights: list[float], strict: bool = False,
                      reduce: str = "mean") -> dict[str, dict]:
    """Policy accuracy of every configuration at every w. heads_by_cfg: cfg -> {user: (w, b)}."""
    from rgd_engine.policy_accuracy import pair_accuracy, sequence_scores

    cfgs = list(heads_by_cfg)
    wt = torch.tensor(weights, dtype=torch.float64)
    s_w, s_l = [], []
    for p in pairs:
        W = torch.stack([heads_by_cfg[c][p.user_id][0].float() for c in cfgs])  # [C, d]
        b = torch.tensor([float(heads_by_cfg[c][p.user_id][1]) for c in cfgs])  # [C]
        cw, cl = trees[p.pair_id]
        s_w.append(sequence_scores(cw, W, b, wt, strict=strict, reduce=reduce))  # [C, Nw]
        s_l.append(sequence_scores(cl, W, b, wt, strict=strict, reduce=reduce))
    acc = pair_accuracy(torch.stack(s_w), torch.stack(s_l))  # accuracy [C, Nw]
    return {c: {w: float(acc["accuracy"][i, j]) for j, w in enumerate(weights)} for i, c in enumerate(cfgs)}


def run(args) -> int:
    from rgd_engine import Engine, EngineConfig, HeadBank
    from rgd_engine.kernels import requested_backend, resolve_backend

    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    t0 = time.time()
    run_dir = Path(args.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    weights = parse_weights(args.weights)
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
    fitted = {}
    for name in tqdm(args.methods, desc="reward models", unit="method", leave=False):
        for hp in variants(name):
            m = make_method(name, hp).fit(train_prof, seed=args.seed)
            fitted[(name, variant_name(hp))] = (hp, m.heads_for(train_prof), m.heads_for(test_prof))

    # 4. policy accuracy on the test users' query pairs, all configurations from one tree per response
    test_pairs = pref.select("test", "query")
    trees = compute_candidate_states(engine, run_dir, feat_key, test_pairs, prompts, args.k, args.backend)
    cfg_heads = {f"{n}/{v}": heads_test for (n, v), (_, _, heads_test) in fitted.items()}
    pol = policy_accuracies(trees, test_pairs, cfg_heads, weights, args.policy_acc_strict, args.policy_acc_reduce)

    reward_models: dict[str, dict] = {}
    selected: dict[str, str] = {}
    for (name, vname), (hp, heads_train, heads_test) in fitted.items():
        test_acc = rm_accuracy(heads_test, test_query)
        entry = rm_entry(hp, test_acc, pol[f"{name}/{vname}"])
        entry["rm_accuracy_validation"] = rm_accuracy(heads_train, train_query)["overall"]["accuracy"]
        entry["rm_accuracy_per_user"] = test_acc["per_user"]
        reward_models.setdefault(name, {})[vname] = entry
        best = selected.get(name)
        if best is None or entry["rm_accuracy_validation"] > reward_models[name][best]["rm_accuracy_validation"]:
            selected[name] = vname

    # 5. generation on the test users' queries
    test_users = sorted(ds.users("test"))
    queries = [q for u in test_users for q in ds.users("test")[u]]
    golds = {q.id: q.gold for q in queries}
    profiles = {u: ds.profile("test", u) for u in test_users}
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
    banks: dict[str, HeadBank] = {}
    for name in args.methods:
        heads_test = fitted[(name, selected[name])][2]
        bank = engine.new_bank(capacity=max(1, len(test_users)))
        for u in test_users:
            w_u, b_u = heads_test[u]
            bank.add(u, w_u.float(), float(b_u))
        banks[name] = bank
        bank.save(run_dir / "heads" / f"{name}.safetensors")
        for w in weights:
            if w == 0:
                continue  # w = 0 is the zero-shot policy itself
            system = f"rgd/{name}/w={w_key(w)}"
            predictions[system] = generate_texts(
                engine, run_dir, f"gen-rgd-{name}-{w_key(w)}", {**gen_key, "variant": selected[name], "w": w},
                [(q.id, zs[q.id], q.user_id) for q in queries], gen_cfg, bank=bank, chat=args.chat, weight=w)
            prompts_by_system[system] = zs

    # 6. scores, correlations, outputs
    generation = {s: score_generation(p, golds, n_boot=args.n_boot, seed=args.seed) for s, p in predictions.items()}
    config = {**{k: v for k, v in vars(args).items() if k != "func"}, "weights": weights, "backend": backend, "selected_variants": selected,
              "versions": versions(), "git": git_hash(), "python": platform.python_version(),
              "machine": platform.machine(), "torch_threads": torch.get_num_threads(),
              "policy_accuracy_definition": "DESIGN.md: mean_t log softmax over C_t = top-k U {y_t} of "
                                            "log pi + w r_u; correct iff S(chosen) > S(rejected), ties wrong",
              "rm_features": "final-norm hidden state at the last token of prompt + ' ' + response",
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
                    "prompt": prompts[p.pair_id], "chosen": p.chosen, "rejected": p.rejected}) + "\n"
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
