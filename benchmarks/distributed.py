"""Wall time of one `rgd-eval run` study as 1 process vs `torchrun --nproc-per-node N` (one thread per process).

    python -m benchmarks.distributed [--nproc 2] [--json PATH] [--keep DIR] -- RGD_EVAL_RUN_ARGS...
    e.g. python -m benchmarks.distributed --json benchmarks/results/distributed.json -- --model demo --users 8

Both runs start from an empty run folder. Reported per run: wall seconds, CPU seconds of the process tree
(user + sys), the load average before and after (the machine may be shared: a wall-time speed-up is only
meaningful on a quiet machine), rank 0's seconds per stage (`results.json` config.stage_seconds; under torchrun a
stage's time includes waiting at its barrier), and the speed-up per stage. The two results.json must be equal up to
timing and process-count fields (else the benchmark fails: a speed-up of a different computation means nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOLATILE = ("elapsed_s", "output_dir", "stage_seconds", "cache", "processes")


def run_once(cmd: list[str], out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    load_before = os.getloadavg()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd + ["--output-dir", str(out)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"benchmarks.distributed: {' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    results = json.loads((out / "results.json").read_text())
    return {"command": " ".join(cmd), "wall_s": round(wall, 1),
            "cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 1),
            "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
            "stage_seconds": results["config"]["stage_seconds"], "results": results}


def comparable(results: dict) -> dict:
    r = json.loads(json.dumps(results))
    for key in VOLATILE:
        r["config"].pop(key, None)
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=2, help="torchrun processes (default 2)")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--keep", help="run folders go here (default: a temporary folder, removed)")
    p.add_argument("study", nargs=argparse.REMAINDER, help="-- then the `rgd-eval run` arguments")
    a = p.parse_args(argv)
    study = [s for s in a.study if s != "--"]
    base = [sys.executable, "-m", "rgd_eval", "run", *study]
    dist = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(a.nproc),
            "-m", "rgd_eval", "run", *study]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.keep or tmp)
        one = run_once(base, root / "one")
        many = run_once(dist, root / f"torchrun-{a.nproc}")
    if comparable(one["results"]) != comparable(many["results"]):
        sys.exit("benchmarks.distributed: the two runs' results.json differ")
    stages = list(dict.fromkeys([*one["stage_seconds"], *many["stage_seconds"]]))
    speedup = {s: round(one["stage_seconds"][s] / many["stage_seconds"][s], 2)
               for s in stages if many["stage_seconds"].get(s) and s in one["stage_seconds"]}
    print(f"{'stage':20s} {'1 process':>10s} {f'{a.nproc} ranks':>10s} {'speed-up':>9s}")
    for s in stages:
        print(f"{s:20s} {one['stage_seconds'].get(s, 0):10.1f} {many['stage_seconds'].get(s, 0):10.1f} "
              f"{speedup.get(s, float('nan')):9.2f}")
    print(f"{'wall':20s} {one['wall_s']:10.1f} {many['wall_s']:10.1f} {one['wall_s'] / many['wall_s']:9.2f}")
    print(f"{'cpu (user+sys)':20s} {one['cpu_s']:10.1f} {many['cpu_s']:10.1f}")
    print(f"load average before/after: 1 process {one['load_before']} / {one['load_after']}; "
          f"{a.nproc} ranks {many['load_before']} / {many['load_after']} ({os.cpu_count()} cores)")
    if a.json:
        for r in (one, many):
            r.pop("results")
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"nproc": a.nproc, "cores": os.cpu_count(), "one_process": one,
                                            "torchrun": many, "speedup_per_stage": speedup,
                                            "speedup_wall": round(one["wall_s"] / many["wall_s"], 2)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
