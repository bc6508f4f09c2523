"""benchmarks/gpu_check.sh --dry-run: every step of the GPU check runs on CPU (no build, tiny settings) and the one
JSON it writes holds every step's status and the results, so the script cannot rot between lent GPUs. The run
carries what a device call carries: a wheel (installed privately, ahead of the interpreter's packages) and a model
skeleton (random weights of its shape are built before the checks)."""
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.version import Version

from benchmarks import gpu_report, shape_model

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # tiny_models
from tiny_models import make_tokenizer, save_tiny  # noqa: E402


def _probe_wheel(folder: Path) -> None:
    """A one-module wheel: if the deps step installs it where the checks' interpreter looks, env lists it."""
    folder.mkdir()
    info = "rgd_wheel_probe-0.1.dist-info"
    with zipfile.ZipFile(folder / "rgd_wheel_probe-0.1-py3-none-any.whl", "w") as z:
        z.writestr("rgd_wheel_probe.py", "VALUE = 7\n")
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: rgd-wheel-probe\nVersion: 0.1\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", f"rgd_wheel_probe.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")


def test_gpu_check_dry_run_writes_one_passing_report(tmp_path):
    out, wheels, skeleton = tmp_path / "out", tmp_path / "wheels", tmp_path / "llama-shape"
    out.mkdir()
    _probe_wheel(wheels)
    shape_model.skeleton(save_tiny(tmp_path / "llama", "llama", seed=4, tokenizer=make_tokenizer()), skeleton)
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "RGD_CHECK_MODEL": str(skeleton),
           "RGD_CHECK_WHEELS": str(wheels)}
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log"]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["ok"] and report["dry_run"] and report["device"] == "cpu"
    assert [s["name"] for s in report["steps"]] == ["deps", "env", "build", "model", "kernel_tests", "engine_check",
                                                   "decode_tiny", "decode_tiny_graph", "decode_model",
                                                   "decode_model_graph"]
    env_log = next(s for s in report["steps"] if s["name"] == "env")["log_tail"]
    assert "carried: rgd-wheel-probe 0.1" in env_log
    assert report["model_dir"] == str(skeleton) and report["model_random_weights"]
    assert {r["model"] for r in report["engine_check"]["results"]} == {"tiny-llama", "llama-shape"}
    assert set(report["decode_model_graph"]["results"]) == {"engine-greedy", "rgd-shared"}
    assert all(s["ok"] for s in report["steps"])
    assert report["kernel_tests"]["tests"] > 0 and report["kernel_tests"]["failures"] == 0
    checks = report["engine_check"]["results"][0]
    assert checks["greedy_equals_hf"]["ok"] and checks["tree_rewards"]["ok"] and checks["backends_agree"]["ok"]
    assert checks["graph_equals_eager"]["ok"] and len(checks["graph_equals_eager"]["cases"]) == 4
    assert {"engine-greedy", "rgd-shared"} <= set(report["decode_tiny"]["results"])
    graph = report["decode_tiny_graph"]
    assert graph["config"]["params"]["cuda_graph"] and set(graph["results"]) == {"engine-greedy", "rgd-shared"}
    _check_rendered_tables(report)


def _rows(text: str, first_cell: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith(f"| {first_cell} |")]


def _check_rendered_tables(report: dict) -> None:
    """benchmarks/gpu_report.py's tables hold the JSON's figures: every step's status, every check, and per decode
    mode its ms/token, the graph run's ms/token and their ratio."""
    text = gpu_report.render(report)
    assert text.startswith("GPU check on cpu (dry run): all steps passed")
    for s in report["steps"]:
        assert _rows(text, s["name"]) == [[s["name"], "ok", str(s["seconds"])]]
    for e in report["engine_check"]["results"]:
        row = _rows(text, e["model"])
        assert [r[1] for r in row] == ["float32"] and row[0][3].startswith("ok 4/4")
    model_table = text.split("`decode_model`")[1]
    for mode, r in report["decode_model"]["results"].items():
        g = report["decode_model_graph"]["results"][mode]["ms_per_token_median"]
        (row,) = _rows(model_table, mode)
        assert float(row[3]) == round(r["ms_per_token_median"], 2) and float(row[8]) == round(g, 2)
        assert float(row[9]) == round(r["ms_per_token_median"] / g, 2)


def test_the_check_asks_for_and_the_wheels_bring_the_transformers_that_setup_py_requires():
    floor = re.search(r'"transformers>=([0-9.]+)"', (ROOT / "setup.py").read_text()).group(1)
    assert re.search(r"^MIN_TRANSFORMERS=([0-9.]+)", (ROOT / "benchmarks" / "gpu_check.sh").read_text(),
                     re.M).group(1) == floor
    pinned = re.search(r"\btransformers==([0-9.]+)", (ROOT / "benchmarks" / "gpu_prepare.sh").read_text()).group(1)
    assert Version(pinned) >= Version(floor), f"gpu_prepare.sh carries transformers {pinned} < setup.py's {floor}"
