"""Arguments of `rgd-eval run`, checked before any work, and which stage reads each one.

Every argument is either read by a cached stage (`pipeline.STAGES[...].reads`: a change recomputes it) or listed
in `UNCACHED` with the reason a change cannot make a cached result stale (it only selects what is computed, is
hashed through a stage's inputs, or feeds the cheap global steps that always rerun). A test checks that the
two cover every argument, so a new argument cannot silently reuse stale results.
"""
from __future__ import annotations

import argparse
import math

from .distributed import parse_shard
from .errors import RunArgumentError
from .lamp import DEFAULT_LAMP_DIR
from .preferences import REJECTED_SOURCES
from .reward_models import METHODS
from .token_models import TOKEN_METHODS

RULES = ("args", "token", "logratio", "bon-block")

UNCACHED = {
    "data": "the data's content reaches every stage through its inputs (prompts, texts)",
    "tasks": "only checks the data's task",
    "users": "selects users; their prompts and texts are the stages' inputs",
    "seed": "reaches the stages through their inputs (negative users, bon-block's sampling config)",
    "rules": "selects which systems run; each system's chunks are keyed by its own rule settings",
    "methods": "selects methods; heads are fitted every run (cheap) and hashed into generation keys",
    "token_methods": "as --methods",
    "bon_methods": "as --methods",
    "bon_samples": "part of bon-block's rule settings in its generation inputs",
    "bon_block_size": "part of bon-block's rule settings in its generation inputs",
    "bon_temperature": "part of bon-block's rule settings in its generation inputs",
    "weights": "policy accuracy is recomputed from the cached candidate trees every run",
    "gen_weights": "selects generation systems; each is keyed by its weight",
    "rejected": "selects the negatives source; the rejected texts are the features' and trees' inputs",
    "max_profile_pairs": "selects pairs; their texts are the stages' inputs",
    "min_profile_pairs": "selects users; their texts are the stages' inputs",
    "icl_n": "changes prompts, which are the stages' inputs",
    "n_boot": "statistics rerun every run",
    "n_perm": "statistics rerun every run",
    "policy_acc_strict": "policy accuracy is recomputed from the cached trees every run",
    "policy_acc_reduce": "policy accuracy is recomputed from the cached trees every run",
    "output_dir": "the run folder itself",
    "device": "every device computes the same results within the parity tests' tolerance",
    "backend": "every kernel backend computes the same results (parity-tested)",
    "debug": "error reporting only",
    "shard": "selects which chunks this process computes; chunk keys do not depend on who computes them",
}


def add_arguments(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """The run options on parser p, except the destinations in `skip` (a sweep sets those per configuration)."""
    def add(*flags, **kw):
        if flags[-1].lstrip("-").replace("-", "_") not in skip:
            p.add_argument(*flags, **kw)

    add("--model", default="demo", help="policy: a model preset (see `rgd-eval ls`; 'demo' = smollm2-135m), an HF model directory or a .gguf file")
    add("--reward-model", default=None, help="separate reward backbone (default: shared trunk)")
    add("--data", default=str(DEFAULT_LAMP_DIR),
        help="LaMP-format folder: LaMP-4, LaMP-5 or LaMP-7 (default: shipped LaMP-4 news data)")
    add("--tasks", nargs="*", default=None, help="tasks to accept (e.g. LaMP-7); default: the data's task")
    add("--users", type=int, default=None,
        help="quick runs: a seeded subset of N users of each split (default: every user)")
    add("--rules", nargs="*", default=list(RULES), choices=list(RULES),
        help="decoding rules to compare (default: all)")
    add("--methods", nargs="*", default=list(METHODS), choices=list(METHODS),
        help="sequence-level RM methods (rules args and bon-block)")
    add("--token-methods", nargs="*", default=list(TOKEN_METHODS), choices=list(TOKEN_METHODS),
        help="token-level RM methods (rule token)")
    add("--bon-methods", nargs="*", default=["per-user"], choices=list(METHODS),
        help="sequence-level methods whose heads bon-block uses (each one of --methods)")
    add("--bon-samples", type=int, default=4, help="bon-block: samples N per block")
    add("--bon-block-size", type=int, default=8, help="bon-block: tokens M per block")
    add("--bon-temperature", type=float, default=0.7, help="bon-block: sampling temperature of pi")
    add("--weights", default="0,0.5,1,2,4",
        help="comma-separated reward weights w, in reward standard deviations (policy accuracy grid; "
             "the validated w of each configuration is chosen among them on the train users)")
    add("--gen-weights", default="validated",
        help="generation weights: 'validated' (each method at its validated w) or a comma-separated "
             "list of weights (each one of --weights) run for every guided method")
    add("-k", type=int, default=10, help="candidates per step (top-k of the policy)")
    add("--seed", type=int, default=0)
    add("--device", default="cpu", choices=["cpu", "cuda"])
    add("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
        help="policy dtype (default bfloat16: on CPU the study runs 1.6 - 1.9x faster than float32 with its "
             "metrics inside the float32 CIs, README Results)")
    add("--output-dir", default="runs/rgd-eval", help="run folder; rerunning resumes from its cache")
    add("--rejected", default="icl-other", choices=list(REJECTED_SOURCES),
        help="rejected response of a pair: icl-other (content-matched: the policy conditioned on another "
             "user's profile), policy (the base policy's greedy output) or other-user (another user's text)")
    add("--max-profile-pairs", type=int, default=6, help="newest profile items per user used as pairs")
    add("--min-profile-pairs", type=int, default=3, help="users with fewer profile pairs are skipped")
    add("--icl-n", type=int, default=4, help="BM25-retrieved profile items in the ICL prompt")
    add("--max-new-tokens", type=int, default=24)
    add("--batch-size", type=int, default=16, help="prompts per batch (= per cached generation chunk)")
    add("--n-boot", type=int, default=1000, help="bootstrap resamples (users) for CIs")
    add("--n-perm", type=int, default=5000, help="permutations for the paired and Kendall tests")
    add("--policy-acc-strict", action="store_true",
        help="policy accuracy: a gold token outside the top-k gives -inf (default: it joins C_t)")
    add("--policy-acc-reduce", default="mean", choices=["mean", "sum"],
        help="policy accuracy: S(y) is the mean (default) or the sum of log pi~(y_t)")
    add("--chat", action="store_true", help="wrap prompts in the model's chat template")
    add("--backend", default=None, help="kernel backend (default: $RGD_BACKEND or auto)")
    add("--shard", default=None, metavar="I/N",
        help="compute only shard I of N's chunks of every chunked stage into the run folder's cache and "
             "exit (job arrays; docs/distributed.md); a plain run afterwards merges them")
    add("--debug", action="store_true", help="show the traceback of an error")


def parse_weights(text: str, name: str = "--weights") -> list[float]:
    try:
        ws = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise RunArgumentError(f"{name} must be comma-separated numbers, got {text!r}") from None
    if not ws or any(not math.isfinite(w) or w < 0 for w in ws):
        raise RunArgumentError(f"{name} needs finite, non-negative weights, got {text!r}")
    return ws


def check_args(args) -> None:
    """Every argument in range, before any work (a bad value names the argument and the accepted range)."""
    def at_least(name: str, lo: int):
        v = getattr(args, name)
        if v is not None and v < lo:
            raise RunArgumentError(f"--{name.replace('_', '-')} must be >= {lo}, got {v}")

    if getattr(args, "shard", None) is not None:  # a sweep has no --shard
        parse_shard(args.shard)
    for name, lo in (("users", 2), ("max_profile_pairs", 1), ("min_profile_pairs", 1), ("icl_n", 1), ("k", 1),
                     ("max_new_tokens", 1), ("batch_size", 1), ("n_boot", 10), ("n_perm", 10), ("bon_samples", 1),
                     ("bon_block_size", 1)):
        at_least(name, lo)
    if args.min_profile_pairs > args.max_profile_pairs:
        raise RunArgumentError(f"--min-profile-pairs {args.min_profile_pairs} exceeds --max-profile-pairs "
                               f"{args.max_profile_pairs}: every user would be skipped")
    if not (math.isfinite(args.bon_temperature) and args.bon_temperature > 0):
        raise RunArgumentError(f"--bon-temperature must be a finite number > 0, got {args.bon_temperature}")
    args.weights_list = parse_weights(args.weights)
    if not any(w > 0 for w in args.weights_list):
        raise RunArgumentError(f"--weights needs a weight > 0 (w = 0 is the base policy), got {args.weights!r}")
    if args.gen_weights.strip() == "validated":
        args.gen_weights_list = None
    else:
        gw = [w for w in parse_weights(args.gen_weights, "--gen-weights") if w != 0]
        if not set(gw) <= set(args.weights_list):
            raise RunArgumentError(f"--gen-weights {gw} must be among --weights {args.weights_list}")
        args.gen_weights_list = gw
    args.rules = list(dict.fromkeys(args.rules))
    if not args.rules:
        raise RunArgumentError("--rules needs at least one rule")
    if "bon-block" in args.rules and not set(args.bon_methods) <= set(args.methods):
        raise RunArgumentError(f"--bon-methods {args.bon_methods} must be among --methods {args.methods}")
    if "args" in args.rules and not args.methods:
        raise RunArgumentError("rule args needs at least one of --methods")
    if "token" in args.rules and not args.token_methods:
        raise RunArgumentError("rule token needs at least one of --token-methods")
