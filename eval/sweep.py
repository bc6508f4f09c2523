"""`rgd-eval sweep`: the study once per configuration (a policy, or a policy with a separate reward backbone), each
in its own run folder OUT/LABEL (resumable: a rerun reads every finished stage from that folder's cache) and its
own process (so its wall time and peak RSS are its own), then the scale report (rgd_eval.scale).

A configuration that fails (a preset that cannot be fetched offline, a crash, out of memory) is reported with its
error and the sweep goes on with the others; the exit status is 1 if any failed.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import RunArgumentError
from .io import read_json, write_json
from .run_args import add_arguments, check_args
from .scale import scale_row, write_scale_report

SWEEP_SETS = ("model", "reward_model", "output_dir", "shard")  # per configuration, or not for a sweep


@dataclass(frozen=True)
class Config:
    label: str
    model: str
    reward_model: str | None = None


def _slug(model: str) -> str:
    """A folder-safe label of a model spec: a preset name as it is, a path by its last component."""
    name = Path(model).name if ("/" in model or model.endswith(".gguf")) else model
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "model"


def configurations(models: list[str], reward_pairs: list[str]) -> list[Config]:
    out = [Config(_slug(m), m) for m in models]
    for pair in reward_pairs:
        policy, sep, reward = pair.partition(":")
        if not (sep and policy and reward):
            raise RunArgumentError(f"--reward-pairs takes POLICY:REWARD_MODEL, got {pair!r}")
        out.append(Config(f"{_slug(policy)}+rm-{_slug(reward)}", policy, reward))
    labels = [c.label for c in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise RunArgumentError(f"two configurations would share the run folder {dup[0]!r}: give each model once")
    return out


def run_options(args) -> list[str]:
    """The run options of a sweep's namespace that differ from `rgd-eval run`'s defaults, as command-line tokens
    (every configuration gets the same ones)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser, skip=SWEEP_SETS)
    argv = []
    for act in parser._actions:
        if not act.option_strings or act.dest == "help":
            continue
        value = getattr(args, act.dest)
        if value == act.default:
            continue
        flag = max(act.option_strings, key=len)
        if isinstance(act, argparse._StoreTrueAction):
            argv.append(flag)
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def run_argv(cfg: Config, run_dir: Path, options: list[str]) -> list[str]:
    argv = ["run", "--model", cfg.model, "--output-dir", str(run_dir)]
    if cfg.reward_model:
        argv += ["--reward-model", cfg.reward_model]
    return argv + options


def run_measured(cmd: list[str], env: dict | None = None) -> dict:
    """Run cmd to completion, its stdout and stderr passed through -> {returncode, wall_s, peak_rss_mb (that
    process's maximum resident set), error: its last stderr line when it failed}."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, env=env)
    tail = b""
    fd = proc.stderr.fileno()
    while chunk := os.read(fd, 8192):  # pass progress bars through as they come; keep the end for the error
        sys.stderr.buffer.write(chunk)
        sys.stderr.buffer.flush()
        tail = (tail + chunk)[-8192:]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = rc = os.waitstatus_to_exitcode(status)
    lines = [ln.strip() for ln in re.split(r"[\r\n]", tail.decode(errors="replace")) if ln.strip()]
    return {"returncode": rc, "wall_s": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # ru_maxrss is in KiB on Linux
            "error": None if rc == 0 else (lines[-1] if lines else f"exited with {rc}")}


def preset_notes(cfgs: list[Config]) -> dict[str, str]:
    """What each configuration's policy is (from the preset table): family, tuning, quantisation."""
    from rgd_engine.models.presets import get_preset

    notes = {}
    for c in cfgs:
        parts = [f"{role} {p.model}" for role, m in (("policy", c.model), ("reward backbone", c.reward_model))
                 if m and (p := get_preset(m))]
        if parts:
            notes[c.label] = "; ".join(parts)
    return notes


def sweep(args) -> int:
    check_args(args)
    cfgs = configurations(args.models, args.reward_pairs)
    out = Path(args.output_dir)
    options = run_options(args)
    command = shlex.join(["rgd-eval", "sweep", "--models", *args.models] +
                         (["--reward-pairs", *args.reward_pairs] if args.reward_pairs else []) +
                         ["--output-dir", str(out), *options])
    rows, failed = [], []
    for i, cfg in enumerate(cfgs, 1):
        run_dir = out / cfg.label
        meta_path = run_dir / "sweep-run.json"  # this configuration's last run: wall time, peak RSS, exit status
        if args.report_only:
            meta = read_json(meta_path) if meta_path.is_file() else {"run_dir": str(run_dir)}
        else:
            print(f"rgd-eval sweep: [{i}/{len(cfgs)}] {cfg.label}", flush=True)
            meta = {"run_dir": str(run_dir)} | run_measured([sys.executable, "-m", "rgd_eval",
                                                            *run_argv(cfg, run_dir, options)])
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(meta_path, meta)
            if meta["returncode"] != 0:
                failed.append({"label": cfg.label, **meta})
                continue
        results_path = run_dir / "results.json"
        if not results_path.is_file():
            failed.append({"label": cfg.label, **meta,
                           "error": meta.get("error") or f"no {results_path} (run the sweep without --report-only)"})
            continue
        rows.append(scale_row(cfg.label, read_json(results_path), meta))
    for path in write_scale_report(out, rows, failed, preset_notes(cfgs), command):
        print(f"wrote {path}")
    for f in failed:
        print(f"rgd-eval sweep: {f['label']} failed: {f['error']}", file=sys.stderr)
    return 1 if failed else 0


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", required=True,
                   help="policies, one study each: presets (`rgd-eval ls`), HF model directories or .gguf files")
    p.add_argument("--reward-pairs", nargs="*", default=[], metavar="POLICY:REWARD_MODEL",
                   help="extra configurations with a separate reward backbone (same tokenizer as the policy)")
    p.add_argument("--output-dir", default="runs/sweep", help="sweep folder: one run folder per configuration "
                                                              "and the scale report")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild scale.json / scale.md / scale.png from the finished runs without running anything")
    add_arguments(p, skip=SWEEP_SETS)
