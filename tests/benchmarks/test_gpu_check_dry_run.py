"""benchmarks/gpu_check.sh --dry-run: every step of the GPU check runs on CPU (no build, tiny settings) and the one
JSON it writes holds every step's status and the results, so the script cannot rot between lent GPUs."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_writes_one_passing_report(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "RGD_CHECK_MODEL": "none"}
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json", "gpu_check.log"]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["ok"] and report["dry_run"] and report["device"] == "cpu"
    assert [s["name"] for s in report["steps"]] == ["env", "build", "kernel_tests", "engine_check", "decode_tiny",
                                                   "decode_tiny_graph"]
    assert all(s["ok"] for s in report["steps"])
    assert report["kernel_tests"]["tests"] > 0 and report["kernel_tests"]["failures"] == 0
    checks = report["engine_check"]["results"][0]
    assert checks["greedy_equals_hf"]["ok"] and checks["tree_rewards"]["ok"] and checks["backends_agree"]["ok"]
    assert checks["graph_equals_eager"]["ok"] and len(checks["graph_equals_eager"]["cases"]) == 4
    assert {"engine-greedy", "rgd-shared"} <= set(report["decode_tiny"]["results"])
    graph = report["decode_tiny_graph"]
    assert graph["config"]["params"]["cuda_graph"] and set(graph["results"]) == {"engine-greedy", "rgd-shared"}
