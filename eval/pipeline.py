"""`rgd-eval run`: the study as a short line of stages (eval/stages.py), each cached by what it reads.

data -> [paraphrases: LaMP-7 pair inputs] -> negatives (rejected texts) -> Pref-LaMP pairs -> candidate trees
(every query pair of train and test users) -> features (sequence, token: the profile pairs' from their own forward,
the query pairs' from their trees) -> reward models (every method x variant; heads for train and test users) ->
reward scales, policy accuracy, validated w -> generation (zero-shot, ICL, every rule at its validated w,
bon-block) -> analysis (rgd_eval.analysis) -> outputs.

Rules (decoder.py): `args` uses the sequence-level methods (global, per-user, lore, vpl); `token` the token-level
methods (token-global, token-per-user); `logratio` one reward, the policy conditioned on the user's BM25 top
profile items (`logratio-icl`); `bon-block` the best of N sampled blocks by a sequence-level method's heads.

Validation never touches the test users: each method's variant is the one with the best RM accuracy on the
*train* users' held-out query pairs, and each configuration's w the one with the best policy accuracy there.
Rewards are standardised: a configuration's r is divided by its standard deviation over the candidates of the
train users' query pairs, so w (in reward standard deviations) means the same for every method.
Every prompt is the task's zero-shot prompt (input + answer cue) except ICL's and the logratio context; the reward
input of a response is prompt tokens + tokens of " " + response, what the decoder produces after the answer cue.
The trees and every generation system start from the policy's single-row prompt prefills (rgd_engine.PromptCache):
each zero-shot and ICL prompt of a query is forwarded once, not once per system, with the same bits whatever the
cache held (a resumed run or another worker computes the same outputs).
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .analysis import analyse
from .distributed import ShardPending, Workers
from .errors import DataError
from .features import features_by_user
from .lamp import LaMPDataset, load_lamp
from .metrics import rm_accuracy, score_generation, token_rm_accuracy, accuracy_from_rewards
from .outputs import write_outputs
from .preferences import (GENERATED_SOURCES, PrefLaMP, build_pref_lamp, negative_prompts, pair_sources,
                          paraphrase_prompts)
from .prompts import icl_prompt, zero_shot_prompt
from .reward_models import make_method, variant_name, variants
from .run_args import check_args
from .stages import Stage, StageCache
from .tasks import canonical_task
from .token_models import TokenPairFeatures, TokenSeq, make_token_method, token_variants

log = logging.getLogger("rgd_eval")
LOGRATIO_METHOD = "logratio-icl"
MODEL_ARGS = ("model", "reward_model", "dtype", "chat")
GEN_ARGS = MODEL_ARGS + ("max_new_tokens", "batch_size")
TREE_CHUNK = 4      # pairs per cached candidate-tree chunk (a few seconds each on 2 cores)
FEATURE_CHUNK = 32  # pairs per cached feature chunk
PROMPT_CACHE_BYTES = 3 << 30  # the study's prompt prefills (bf16 demo: about 2.5 GB for the default study)

STAGES = {s.name: s for s in (
    Stage("paraphrases", GEN_ARGS, "LaMP-7: the policy's zero-shot paraphrase of each bare-text profile item "
                                   "(the input of its pair)", revision=3),
    Stage("negatives", GEN_ARGS, "rejected texts the policy writes (icl-other: conditioned on another user's "
                                 "profile; policy: zero-shot)", revision=3),
    Stage("features", MODEL_ARGS, "final-norm states of x o y of the profile pairs, chosen and rejected: at the "
                                  "last token (sequence heads) and at every response prefix (token heads)", "torch",
          revision=4),
    Stage("trees", MODEL_ARGS + ("k",), "teacher-forced candidate trees of the query pairs (policy accuracy; "
                                        "the query pairs' features)", "torch", revision=4),
    Stage("generation", GEN_ARGS, "zero-shot and ICL greedy generation", terminal=True, revision=4),
    Stage("generation-guided", GEN_ARGS + ("k",), "reward-guided generation (args, token, logratio)",
          terminal=True, revision=4),
    Stage("generation-bon", GEN_ARGS, "blockwise best-of-N generation (its sampling settings in the inputs)",
          terminal=True, revision=4),
)}


SHARED_PREFILL_STAGES = ("generation", "generation-guided", "generation-bon")


@dataclass(frozen=True)
class Row:
    id: str
    prompt: str
    user: str | None = None
    cond: str | None = None  # the logratio rule's profile-conditioned prompt


class Study:
    """One run: its arguments, run folder, this process's place among the run's workers, stage cache and
    (lazily) the engine."""

    def __init__(self, args, workers: Workers | None = None):
        self.args = args
        self.run_dir = Path(args.output_dir)
        self.workers = workers or Workers()
        self.cache = StageCache(self.run_dir, args, self.workers)
        self._engine = None
        self._prompt_cache = None
        self.timings: dict[str, float] = {}

    @property
    def engine(self):
        if self._engine is None:
            from rgd_engine import Engine, EngineConfig

            a = self.args
            self._engine = Engine.from_config(EngineConfig(model=a.model, reward_model=a.reward_model,
                                                           device=self.workers.device(a.device), dtype=a.dtype),
                                              backend=a.backend)
        return self._engine

    @property
    def prompt_cache(self):
        """The policy's single-row prompt prefills, shared by the trees and every generation system."""
        if self._prompt_cache is None:
            self._prompt_cache = self.engine.new_prompt_cache(PROMPT_CACHE_BYTES)
        return self._prompt_cache

    def timed(self, name: str, fn, *args, **kwargs):
        t = time.time()
        out = fn(*args, **kwargs)
        self.timings[name] = round(self.timings.get(name, 0.0) + time.time() - t, 2)
        return out

    def response_ids(self, text: str) -> list[int]:
        """Tokens of a response as the decoder emits it after the answer cue (leading space)."""
        return self.engine.tokenizer(" " + text.strip(), add_special_tokens=False)["input_ids"]

    def generate(self, stage: str, rows: list[Row], desc: str, bank=None, weight: float = 0.0,
                 heads: dict | None = None, **rule_cfg) -> dict[str, str]:
        """rows -> {id: continuation}, cached per batch-sized chunk, batches sorted by prompt length.
        heads: user -> head tensors (hashed into the key); rule_cfg: GenerationConfig fields (rule, k, ...).
        The generation stages start from the shared prompt prefills; negatives and paraphrases, whose prompts
        no other stage reads, from one batched prefill."""
        a, st = self.args, STAGES[stage]
        rows = sorted(rows, key=lambda r: (len(r.prompt), r.id))

        def inputs_of(chunk):
            return {"rule": rule_cfg, "w": weight,
                    "rows": [[r.id, r.prompt, r.cond, r.user, heads.get(r.user) if heads and r.user else None]
                             for r in chunk]}

        shared = self.prompt_cache if stage in SHARED_PREFILL_STAGES else None

        def compute(chunk):
            gens = self.engine.generate([r.prompt for r in chunk], users=[r.user for r in chunk], heads=bank,
                                        chat=a.chat, max_new_tokens=a.max_new_tokens, stop=("\n",), weight=weight,
                                        cond_prompts=[r.cond for r in chunk] if rule_cfg.get("rule") == "logratio"
                                        else None, prompt_cache=shared, **rule_cfg)
            return {r.id: g.text.strip() for r, g in zip(chunk, gens)}

        out: dict[str, str] = {}
        for part in self.cache.map_chunks(st, rows, a.batch_size, inputs_of, compute, desc):
            out.update(part)
        return out


# ---- stages -------------------------------------------------------------------------------------------------

def load_data(args) -> LaMPDataset:
    """The LaMP folder (train and test splits), its task checked, optionally a seeded subset of users."""
    ds = load_lamp(args.data)
    if args.tasks and ds.task not in {canonical_task(t) for t in args.tasks}:
        raise DataError(f"data {args.data} is {ds.task}, not one of --tasks {args.tasks}")
    missing = [s for s in ("train", "test") if s not in ds.splits]
    if missing:
        raise DataError(f"data {args.data} has no {' and no '.join(missing)} split (found: {sorted(ds.splits)}); "
                        "a study needs train users (validation) and test users (evaluation)")
    ds = LaMPDataset(task=ds.task, root=ds.root, splits={s: ds.splits[s] for s in ("train", "test")})
    if args.users is None:
        return ds
    splits = {}
    for split, qs in ds.splits.items():
        users = sorted({q.user_id for q in qs})
        keep = set(random.Random(f"{args.seed}/users/{split}").sample(users, min(args.users, len(users))))
        splits[split] = [q for q in qs if q.user_id in keep]
    return LaMPDataset(task=ds.task, root=ds.root, splits=splits)


def build_pairs(study: Study, ds: LaMPDataset) -> tuple[PrefLaMP, dict[str, str]]:
    """Pref-LaMP pairs and the zero-shot prompt of every pair (its reward / policy input)."""
    a = study.args
    para = paraphrase_prompts(ds, a.max_profile_pairs)
    paraphrases = study.generate("paraphrases", [Row(pid, p) for pid, p in para.items()], "paraphrases") if para \
        else None
    sources, dropped = pair_sources(ds, a.max_profile_pairs, paraphrases)
    texts = neg_users = None
    if a.rejected in GENERATED_SOURCES:
        prompts = negative_prompts(ds, sources, a.rejected, a.icl_n, a.seed)
        texts = study.generate("negatives", [Row(pid, p) for pid, (p, _) in prompts.items()], "negatives")
        neg_users = {pid: v for pid, (_, v) in prompts.items()}
    pref = build_pref_lamp(ds, sources, a.rejected, texts, neg_users, seed=a.seed,
                           min_profile_pairs=a.min_profile_pairs, dropped_paraphrases=dropped)
    for split in ("train", "test"):
        if not pref.users(split):
            raise DataError(f"split {split!r} of {a.data} has no usable user: every user has fewer than "
                            f"--min-profile-pairs {a.min_profile_pairs} profile pairs or no query pair "
                            f"(counts: {pref.stats[split]})")
    return pref, {p.pair_id: zero_shot_prompt(ds.task, p.input) for p in pref.pairs}


def compute_features(study: Study, pairs, prompts) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Reward features of pairs from one forward of each x o y: h(x o y_w), h(x o y_l) as two [P, d] tensors
    (sequence-level heads) and {pair_id: (chosen, rejected)} TokenSeqs (prefix states and the backbone's LM-head
    rows of the response tokens: token-level heads)."""
    from rgd_engine.features import response_states

    eng = study.engine
    emb = eng.backbone.lm_head_weight.detach().float().cpu()  # [V, d]

    def compute(chunk):
        x = [eng.encode(prompts[p.pair_id]) for p in chunk]
        ys = [study.response_ids(p.chosen) for p in chunk] + [study.response_ids(p.rejected) for p in chunk]
        last, prefix = response_states(eng.backbone, x + x, ys)
        n = len(chunk)
        return {"chosen": last[:n], "rejected": last[n:], "h": prefix, "ids": [torch.tensor(y) for y in ys]}

    parts = study.cache.map_chunks(STAGES["features"], pairs, FEATURE_CHUNK, lambda c: _pair_inputs(c, prompts),
                                   compute, "features")
    tok = {}
    for chunk, got in zip(_chunks(pairs, FEATURE_CHUNK), parts):
        n = len(chunk)
        for i, p in enumerate(chunk):
            tok[p.pair_id] = tuple(TokenSeq(got["h"][j], emb[got["ids"][j]]) for j in (i, n + i))
    return torch.cat([g["chosen"] for g in parts]), torch.cat([g["rejected"] for g in parts]), tok


def _pair_inputs(chunk, prompts, conds=None) -> dict:
    return {"pairs": [[p.pair_id, prompts[p.pair_id], p.chosen, p.rejected] +
                      ([conds[p.pair_id]] if conds else []) for p in chunk]}


def _chunks(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)]


def compute_trees(study: Study, pairs, prompts, conds: dict[str, str] | None):
    """One teacher-forced candidate tree per (pair, chosen | rejected) -> {pair_id: (cs_chosen, cs_rejected)}.
    conds: pair_id -> profile-conditioned prompt (adds log pi_u at the candidates, rule logratio)."""
    from rgd_engine.policy_accuracy import CandidateStates, prompt_candidate_states

    eng, a = study.engine, study.args
    fields = ("logprob", "states", "gold_index", "ids", "prefix", "cond_logprob")

    def compute(chunk):
        res = {}
        for p in chunk:
            x = eng.encode(prompts[p.pair_id])
            cond = eng.encode(conds[p.pair_id]) if conds else None
            trees = prompt_candidate_states(eng.policy, eng.backbone, x, [study.response_ids(p.chosen),
                                            study.response_ids(p.rejected)], a.k, a.backend, cond_prompt_ids=cond,
                                            prompt_cache=study.prompt_cache)
            for side, cs in zip(("chosen", "rejected"), trees):
                res[f"{p.pair_id}|{side}"] = {f: getattr(cs, f) for f in fields if getattr(cs, f) is not None}
        return res

    out = {}
    parts = study.cache.map_chunks(STAGES["trees"], pairs, TREE_CHUNK, lambda c: _pair_inputs(c, prompts, conds),
                                   compute, "candidate trees")
    for got in parts:
        for key, rec in got.items():
            pid, side = key.rsplit("|", 1)
            out.setdefault(pid, {})[side] = CandidateStates(**{f: rec.get(f) for f in fields})
    return {pid: (d["chosen"], d["rejected"]) for pid, d in out.items()}


def tree_features(trees: dict, pairs, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """compute_features of the query pairs, read from their candidate trees: the gold column of a tree holds the
    states of x o y<=t, so its last row is h(x o y) and its prefix states are those of x o y<t. emb [V, d]."""
    def last(cs):
        return cs.states[-1, cs.k]  # [d]

    hw = torch.stack([last(trees[p.pair_id][0]) for p in pairs])  # [P, d]
    hl = torch.stack([last(trees[p.pair_id][1]) for p in pairs])
    tok = {p.pair_id: tuple(TokenSeq(cs.prefix, emb[cs.ids[:, cs.k]]) for cs in trees[p.pair_id]) for p in pairs}
    return hw, hl, tok


def fit_reward_models(args, pref: PrefLaMP, feats, tok_feats) -> dict[tuple[str, str], dict]:
    """Every (method, variant): {rule, hparams, train: heads of train users, test: heads of test users}."""
    from tqdm import tqdm

    families = []  # (rule, methods, their variants, constructor, features of a split's pairs)
    if {"args", "bon-block"} & set(args.rules):
        families.append(("args", args.methods, variants, make_method, feats))
    if "token" in args.rules:
        families.append(("token", args.token_methods, token_variants, make_token_method, tok_feats))
    out = {}
    for rule, methods, variants_of, make, feats_of in families:
        prof = {s: feats_of(s, "profile") for s in ("train", "test")}
        for name in tqdm(methods, desc=f"{rule} reward models", unit="method", leave=False):
            for hp in variants_of(name):
                m = make(name, hp).fit(prof["train"], seed=args.seed)
                out[name, variant_name(hp)] = {"rule": rule, "hparams": hp, "train": m.heads_for(prof["train"]),
                                               "test": m.heads_for(prof["test"])}
    return out


def token_features_by_user(pairs, feats: dict) -> dict[str, TokenPairFeatures]:
    by_user: dict[str, tuple[list, list]] = {}
    for p in pairs:
        c, r = feats[p.pair_id]
        by_user.setdefault(p.user_id, ([], []))
        by_user[p.user_id][0].append(c)
        by_user[p.user_id][1].append(r)
    return {u: TokenPairFeatures(c, r) for u, (c, r) in by_user.items()}


# ---- candidate rewards, scales and policy accuracy ------------------------------------------------------------

def candidate_rewards(cfg: dict, cs, user: str, split: str, emb) -> torch.Tensor:
    """r_t(v) of one configuration at every candidate of a tree -> [T, k+1] float64 (raw, unscaled)."""
    if cfg["rule"] == "args":
        w, b = cfg[split][user]
        return cs.states.double() @ w.double() + float(b)
    if cfg["rule"] == "token":
        P, Q = (x.double() for x in cfg[split][user])
        q = (cs.prefix.double() @ Q.t()) @ P  # [T, d]: A_u h_t = P^T Q h_t
        return torch.einsum("tcd,td->tc", emb[cs.ids].double(), q)
    return cs.cond_logprob.double() - cs.logprob.double()  # logratio


def candidate_set(cs) -> torch.Tensor:
    """[T, k+1] bool: the columns of C_t = top-k U {y_t} (the gold column only where y_t is outside the top-k)."""
    valid = torch.ones(cs.logprob.shape, dtype=torch.bool)
    valid[:, -1] = cs.gold_index == cs.k
    return valid


CONSTANT_REWARD_SD = 1e-6  # below this a reward does not separate candidates: it is treated as 0


def reward_scale(cfg: dict, trees, pairs, emb) -> float | None:
    """Standard deviation of a configuration's reward over every candidate of the train users' query pairs;
    None for a (numerically) constant reward, e.g. a head the L2 penalty shrank to zero: it guides nothing,
    and dividing by its tiny sd would only amplify rounding noise."""
    r = torch.cat([candidate_rewards(cfg, cs, p.user_id, "train", emb)[candidate_set(cs)]
                   for p in pairs for cs in trees[p.pair_id]])
    sd = float(r.std())
    return sd if sd > CONSTANT_REWARD_SD else None


def scaled_weight(w: float, scale: float | None) -> float:
    """The weight on the raw reward that is w on the standardised one (0 for a constant reward)."""
    return w / scale if scale else 0.0


def policy_correct(cfg: dict, trees, pairs, split: str, scale: float, weights: list[float], emb, args):
    """Per-pair policy correctness of one configuration at every w -> correct [N, Nw] bool, ties [N, Nw]."""
    from rgd_engine.policy_accuracy import rule_scores

    wt = torch.tensor([scaled_weight(w, scale) for w in weights], dtype=torch.float64)
    s = []
    for p in pairs:
        s.append(torch.stack([rule_scores(cs, candidate_rewards(cfg, cs, p.user_id, split, emb)[..., None], wt,
                                          strict=args.policy_acc_strict, reduce=args.policy_acc_reduce)[0]
                              for cs in trees[p.pair_id]]))  # [2, Nw]
    s = torch.stack(s)  # [N, 2, Nw]
    return s[:, 0] > s[:, 1], s[:, 0] == s[:, 1]


def per_user_counts(pairs, correct: torch.Tensor) -> dict[str, dict]:
    """correct [N] bool over pairs -> {user: {correct, n}}."""
    out: dict[str, dict] = {}
    for p, c in zip(pairs, correct.tolist()):
        d = out.setdefault(p.user_id, {"correct": 0, "n": 0})
        d["correct"] += int(c)
        d["n"] += 1
    return out


def logratio_rm_accuracy(trees, pairs) -> dict:
    """RM accuracy of R_u(y) = sum_t log pi(y_t | c_u o x o y<t) - log pi(y_t | x o y<t)."""
    rewards: dict[str, tuple[list, list]] = {}
    for p in pairs:
        r = [float((cs.cond_logprob[:, -1].double() - cs.logprob[:, -1].double()).sum()) for cs in trees[p.pair_id]]
        rewards.setdefault(p.user_id, ([], []))
        rewards[p.user_id][0].append(r[0])
        rewards[p.user_id][1].append(r[1])
    return accuracy_from_rewards(rewards)


def evaluate_configs(study: Study, pref: PrefLaMP, fitted: dict, seq_feats, tok_feats, trees, emb) -> dict:
    """RM accuracy (validation and test), reward scale, policy accuracy per w (train and test) and the
    validated w of every configuration; the validated variant of every method."""
    a = study.args
    weights = a.weights_list
    q = {s: pref.select(s, "query") for s in ("train", "test")}
    configs, validation = {}, {}
    for (name, vname), f in fitted.items():
        feats_of = seq_feats if f["rule"] == "args" else tok_feats
        acc_fn = rm_accuracy if f["rule"] == "args" else token_rm_accuracy
        validation[name, vname] = acc_fn(f["train"], feats_of("train", "query"))
        if f["rule"] == "args" and "args" not in a.rules:
            continue  # fitted for bon-block's heads only: no policy accuracy to report
        configs[f"{name}/{vname}"] = {**f, "name": name, "variant": vname, "rm_validation": validation[name, vname],
                                      "rm_test": acc_fn(f["test"], feats_of("test", "query"))}
    if "logratio" in a.rules:
        vname = f"icl_n={a.icl_n}"
        validation[LOGRATIO_METHOD, vname] = logratio_rm_accuracy(trees, q["train"])
        configs[f"{LOGRATIO_METHOD}/{vname}"] = {
            "rule": "logratio", "name": LOGRATIO_METHOD, "variant": vname, "hparams": {"icl_n": a.icl_n},
            "rm_validation": validation[LOGRATIO_METHOD, vname], "rm_test": logratio_rm_accuracy(trees, q["test"])}
    for cfg in configs.values():
        cfg["scale"] = reward_scale(cfg, trees, q["train"], emb)
        for split in ("train", "test"):
            correct, ties = policy_correct(cfg, trees, q[split], split, cfg["scale"], weights, emb, a)
            cfg[f"policy_{split}"] = {"correct": correct, "ties": ties,
                                      "per_user": [per_user_counts(q[split], correct[:, j]) for j in range(len(weights))]}
        val = cfg["policy_train"]["correct"].double().mean(0)  # [Nw]
        guided = [j for j, w in enumerate(weights) if w > 0]
        cfg["validated_w"] = weights[max(guided, key=lambda j: (float(val[j]), -weights[j]))]
    selected: dict[str, str] = {}
    for (name, vname), acc in validation.items():  # first variant wins ties (the grid's order)
        best = selected.get(name)
        if best is None or acc["overall"]["accuracy"] > validation[name, best]["overall"]["accuracy"]:
            selected[name] = vname
    return {"configs": configs, "selected": selected}


# ---- generation -----------------------------------------------------------------------------------------------

def generation_systems(study: Study, ds: LaMPDataset, pref: PrefLaMP, fitted: dict, evals: dict) -> dict:
    """-> {system: {"predictions": {id: text}, "prompts": {id: prompt}}} for the test users' queries."""
    a, eng = study.args, study.engine
    test_users = pref.users("test")
    queries = [q for u in test_users for q in ds.users("test")[u]]
    profiles = {u: ds.profile("test", u) for u in test_users}
    zs = {q.id: zero_shot_prompt(ds.task, q.input) for q in queries}
    icl = {q.id: icl_prompt(ds.task, q.input, profiles[q.user_id], n=a.icl_n) for q in queries}
    systems = {"zero-shot": (study.generate("generation", [Row(i, p) for i, p in zs.items()], "zero-shot"), zs),
               "icl": (study.generate("generation", [Row(i, p) for i, p in icl.items()], "icl"), icl)}
    user_rows = [Row(q.id, zs[q.id], q.user_id, icl[q.id]) for q in queries]
    configs, selected = evals["configs"], evals["selected"]
    bank_dir = study.run_dir / "heads"
    for name, vname in selected.items():
        f = fitted.get((name, vname))
        cfg = configs.get(f"{name}/{vname}")
        bank = None
        if f is not None:
            heads = f["test"]
            if f["rule"] == "args":
                bank = eng.new_bank(capacity=max(1, len(test_users)))
                for u in test_users:
                    bank.add(u, heads[u][0].float(), float(heads[u][1]))
            else:
                bank = eng.new_token_bank(rank=next(iter(heads.values()))[0].shape[0], capacity=max(1, len(test_users)))
                for u in test_users:
                    bank.add(u, *heads[u])
            if study.workers.complete:  # the process that writes the outputs (not a shard, not a rank > 0)
                bank.save(bank_dir / f"{name}.safetensors")
        if "bon-block" in a.rules and name in a.bon_methods:
            systems[f"bon-block/{name}"] = (study.generate(
                "generation-bon", user_rows, f"bon-block/{name}", bank=bank, heads=f["test"], rule="bon-block",
                n_samples=a.bon_samples, block_size=a.bon_block_size, temperature=a.bon_temperature, seed=a.seed), zs)
        if cfg is None:
            continue  # bon-block only
        for w in (a.gen_weights_list or [cfg["validated_w"]]):
            system = f"rgd/{name}/w={w:g}"
            systems[system] = (study.generate(
                "generation-guided", user_rows, system, bank=bank, weight=scaled_weight(w, cfg["scale"]),
                heads=f["test"] if f else None, rule=cfg["rule"], k=a.k), zs)
    return {s: {"predictions": p, "prompts": pr} for s, (p, pr) in systems.items()}


# ---- the run ----------------------------------------------------------------------------------------------------

def run(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    t0 = time.time()
    check_args(args)
    workers = Workers.start(args)
    try:
        code = run_study(args, workers, t0)
        workers.finish()
        return code
    except ShardPending as e:
        print(f"rgd-eval: {e}")
        return 0
    finally:
        workers.close()


def run_study(args, workers: Workers, t0: float) -> int:
    """The stages in order. Several workers (rgd_eval.distributed) each compute their share of the chunked stages;
    the global steps in between run on rank 0 and are broadcast; after the generation systems the workers merge
    and only the one that writes the outputs goes on."""
    torch.manual_seed(args.seed)
    study = Study(args, workers)
    ds = study.timed("data", load_data, args)
    pref, prompts = study.timed("pairs", build_pairs, study, ds)
    query_pairs, profile_pairs = pref.select(kind="query"), pref.select(kind="profile")
    conds = None
    if "logratio" in args.rules:
        conds = {p.pair_id: icl_prompt(ds.task, p.input, ds.profile(p.split, p.user_id), n=args.icl_n)
                 for p in query_pairs}
    trees = study.timed("trees", compute_trees, study, query_pairs, prompts, conds)
    emb = study.engine.backbone.lm_head_weight.detach().float().cpu()
    hw, hl, tok = study.timed("features", compute_features, study, profile_pairs, prompts)
    qw, ql, qtok = tree_features(trees, query_pairs, emb)
    hw, hl, tok = torch.cat([hw, qw]), torch.cat([hl, ql]), {**tok, **qtok}
    row = {p.pair_id: i for i, p in enumerate(profile_pairs + query_pairs)}

    def seq_feats(split, kind):
        sel = pref.select(split, kind)
        idx = torch.tensor([row[p.pair_id] for p in sel], dtype=torch.long)
        return features_by_user(sel, hw[idx], hl[idx])

    def tok_feats(split, kind):
        return token_features_by_user(pref.select(split, kind), tok)

    fitted = study.timed("reward models", workers.on_rank0, fit_reward_models, args, pref, seq_feats, tok_feats)
    evals = study.timed("policy accuracy", workers.on_rank0, evaluate_configs, study, pref, fitted, seq_feats,
                        tok_feats, trees, emb)
    systems = study.timed("generation", generation_systems, study, ds, pref, fitted, evals)
    if not workers.complete:  # each worker generated its own chunks only
        if not workers.merge(study.cache):
            return 0
        systems = study.timed("generation", generation_systems, study, ds, pref, fitted, evals)  # from the cache
    users_of = {q.id: q.user_id for q in ds.splits["test"]}
    golds = {q.id: q.gold for q in ds.splits["test"] if q.id in systems["zero-shot"]["predictions"]}
    scores = {s: score_generation(v["predictions"], golds, users_of, n_boot=args.n_boot, seed=args.seed)
              for s, v in systems.items()}
    from rgd_engine.kernels import requested_backend, resolve_backend

    backend = resolve_backend(args.backend or requested_backend(), study.engine.policy.device.type)
    n_params = sum(p.numel() for p in study.engine.policy.hf_model.parameters())
    results = study.timed("analysis", analyse, args, ds, pref, evals, scores, n_params, backend)
    results["config"]["stage_seconds"] = study.timings
    results["config"]["cache"] = workers.cache_counts(study.cache)
    results["config"]["processes"] = workers.world
    results["config"]["elapsed_s"] = round(time.time() - t0, 1)
    for path in write_outputs(study.run_dir, results, pref, prompts, systems, golds, users_of, conds, scores):
        print(f"wrote {path}")
    print(f"rgd-eval: done in {results['config']['elapsed_s']} s -> {study.run_dir / 'results.json'}")
    return 0
