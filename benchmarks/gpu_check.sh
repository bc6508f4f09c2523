#!/usr/bin/env bash
# The one GPU check for a lent H100/H200 (sm_90), self-contained and offline:
#   1. environment (torch must see the GPU)            4. engine parity on CUDA (benchmarks/engine_check.py):
#   2. carried wheels; build both extensions in place     greedy = HF, tree-mask rewards = recomputation,
#   3. kernel parity, sampling and triton-settings        backend equivalence, float16 / bfloat16 tolerances,
#      tests on CUDA (cuda, triton, torch backends)       the CUDA-graph step = the same step without a graph
#                                                      5. kernel timings (benchmarks/kernels.py)
#                                                      6. decode benchmark on the tests' tiny model and on a
#                                                         real model directory when one travels with the tree,
#                                                         then engine-greedy and rgd-shared with --cuda-graph
# Writes ONE JSON, $OUT/gpu_check.json (every step's status, seconds, log tail and results), plus the full log
# $OUT/gpu_check.log; prints a summary. Budget: <= 8 minutes (per-step timeouts below add up to 480 s).
#
#   benchmarks/gpu_check.sh             on the GPU machine
#   benchmarks/gpu_check.sh --dry-run   on CPU with tiny settings and no build: CI runs it so the script cannot rot
#
# Nothing is downloaded: python3 (or $PYTHON) must already have torch (CUDA build), triton, pytest and numpy; nvcc on
# PATH or in /usr/local/cuda/bin. transformers must be >= MIN_TRANSFORMERS (setup.py's floor): wheels under .whl/ (or
# $RGD_CHECK_WHEELS) are installed into a private folder first and shadow the interpreter's own packages. The real
# model: $RGD_CHECK_MODEL (none = no real model), else the first HF directory under .models/, else none; a directory
# without weights (a skeleton) gets seeded random weights of its shape first (benchmarks/shape_model.py).
# benchmarks/gpu_prepare.sh writes both .whl/ and a skeleton of the demo model; the device call carries them:
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl", ".models"], timeout_s=560)
# Then, here: python -m benchmarks.gpu_report FILES_AT/gpu_check.json --md gpu_check.md (the README's tables).
set -euo pipefail

cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; elif [ -n "${1:-}" ]; then echo "usage: $0 [--dry-run]" >&2; exit 2; fi
OUT="${OUT:-$PWD/benchmarks/results/gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export PATH="$PATH:/usr/local/cuda/bin" TORCH_CUDA_ARCH_LIST="9.0" MAX_JOBS="${MAX_JOBS:-16}" PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec > >(tee "$OUT/gpu_check.log") 2>&1

if [ "$DRY" = 1 ]; then
  DEVICE=cpu
  export TRITON_INTERPRET=1
  DTYPES=(float32)
  ENGINE=(--models tiny-llama --new-tokens 3)
  TESTS=(tests/test_triton_settings.py -k "bounded or unbounded or limit")
  DECODE=(--prompt-len 16 --new-tokens 3 --repeats 1 --modes engine-greedy rgd-shared)
else
  DEVICE=cuda
  DTYPES=(float32 float16 bfloat16)
  ENGINE=(--new-tokens 8)
  TESTS=(tests/test_kernels_parity.py tests/test_sampling_stats.py tests/test_triton_settings.py
         -k "cuda or triton or torch or bounded or unbounded or limit")
  DECODE=(--prompt-len 128 --new-tokens 32 --repeats 3
          --modes hf-greedy engine-greedy rgd-shared rgd-token rgd-logratio rgd-bon-block)
fi
MIN_TRANSFORMERS=5.24  # setup.py's floor (tests/benchmarks/test_gpu_check_dry_run.py keeps the two equal)
WHEELS="${RGD_CHECK_WHEELS:-.whl}"
MODEL_DIR="${RGD_CHECK_MODEL:-}"
if [ "$MODEL_DIR" = none ]; then
  MODEL_DIR=""
elif [ -z "$MODEL_DIR" ]; then
  MODEL_DIR="$(dirname "$(ls -d .models/*/config.json 2>/dev/null | head -n 1)" 2>/dev/null || true)"
  [ "$MODEL_DIR" = "." ] && MODEL_DIR=""
fi
MODEL_SOURCE="$MODEL_DIR"

# step NAME TIMEOUT_S CMD...: run with a timeout, log to $WORK/NAME.log, record its status and keep going.
# A dry run gets 4x the limits: CI's 2 shared cores, not the GPU budget.
step() {
  local name=$1 limit=$(( $2 * (DRY ? 4 : 1) ))
  shift 2
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS rc=0
  timeout "$limit" "$@" > "$WORK/$name.log" 2>&1 || rc=$?
  tail -n 15 "$WORK/$name.log"
  echo "== $name: rc=$rc in $((SECONDS - t0))s"
  echo "{\"name\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}" >> "$WORK/steps.jsonl"
}

if compgen -G "$WHEELS/*.whl" > /dev/null; then
  step deps 25 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" \
    "$WHEELS"/*.whl
  export PYTHONPATH="$PWD:$WORK/site${PYTHONPATH#"$PWD"}"
fi

step env 15 "$PY" - "$DEVICE" "$MIN_TRANSFORMERS" "$WORK/site" <<'PY'
import importlib.metadata as md, shutil, sys, torch
from pathlib import Path
from packaging.version import Version
device, floor, site = sys.argv[1], Version(sys.argv[2]), Path(sys.argv[3])
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if device == "cuda":
    assert torch.version.cuda is not None, "this torch has no CUDA: install a CUDA build of torch first"
    assert torch.cuda.is_available(), "torch sees no GPU"
    import build_ext  # the toolkit folder the build will use; a wrong one fails here, not after the CPU build
    print("device", torch.cuda.get_device_name(0), "nvcc", shutil.which("nvcc"), "cuda_home", build_ext.cuda_home())
carried = sorted(f"{d.metadata['Name']} {d.version}" for d in md.distributions(path=[str(site)]))
print("carried:", ", ".join(carried) if carried else "none")
for mod in ("transformers", "triton", "pytest", "numpy"):
    m = __import__(mod)
    print(mod, m.__version__, m.__file__)
import transformers
assert Version(transformers.__version__) >= floor, (
    f"transformers {transformers.__version__} < {floor}: carry newer wheels (benchmarks/gpu_prepare.sh writes .whl/)")
PY
nvidia-smi > "$WORK/nvidia-smi.log" 2>&1 || true

if [ "$DRY" = 1 ]; then  # CI has built the C++ extension already; a dry run only checks that it imports
  step build 30 "$PY" -c "import torch, rgd_engine._C; print('rgd_engine._C', rgd_engine._C.__file__)"
else
  step build 150 sh -c "'$PY' setup.py build_ext --inplace && '$PY' -c 'import torch, rgd_engine._C, rgd_engine._C_cuda'"
fi

if [ -n "$MODEL_DIR" ] && ! compgen -G "$MODEL_DIR/*.safetensors" > /dev/null \
    && ! compgen -G "$MODEL_DIR/*.bin" > /dev/null; then
  step model 20 "$PY" -m benchmarks.shape_model materialize "$MODEL_DIR" "$WORK/$(basename "$MODEL_DIR")" --seed 0
  MODEL_DIR="$WORK/$(basename "$MODEL_DIR")"
fi

step kernel_tests 80 env RGD_TEST_DEVICE="$DEVICE" RGD_REQUIRE_EXT=1 "$PY" -m pytest -q -p no:cacheprovider \
  "${TESTS[@]}" --junitxml="$WORK/kernel_tests.xml" --durations=5

step engine_check 70 "$PY" -m benchmarks.engine_check --device "$DEVICE" --dtypes "${DTYPES[@]}" "${ENGINE[@]}" \
  --json "$WORK/engine_check.json" ${MODEL_DIR:+--model-dir "$MODEL_DIR"}

if [ "$DRY" = 0 ]; then
  step kernels 25 "$PY" -m benchmarks.kernels --device cuda --json "$WORK/kernels.json"
fi

"$PY" - "$WORK/tiny" <<'PY'
import sys
sys.path.insert(0, "tests")
from pathlib import Path
from tiny_models import make_tokenizer, save_tiny
tok = make_tokenizer()
save_tiny(Path(sys.argv[1]) / "llama", "llama", seed=1, tokenizer=tok)
PY
step decode_tiny 25 "$PY" -m benchmarks.decode --device "$DEVICE" --model "$WORK/tiny/llama" "${DECODE[@]}" \
  --json "$WORK/decode_tiny/decode.json"
step decode_tiny_graph 20 "$PY" -m benchmarks.decode --device "$DEVICE" --model "$WORK/tiny/llama" "${DECODE[@]}" \
  --cuda-graph --modes engine-greedy rgd-shared --json "$WORK/decode_tiny_graph/decode.json"
if [ -n "$MODEL_DIR" ]; then
  MODEL_DTYPE="$([ "$DRY" = 1 ] && echo float32 || echo bfloat16)"
  step decode_model 30 "$PY" -m benchmarks.decode --device "$DEVICE" --model "$MODEL_DIR" \
    --dtype "$MODEL_DTYPE" "${DECODE[@]}" --json "$WORK/decode_model/decode.json"
  step decode_model_graph 20 "$PY" -m benchmarks.decode --device "$DEVICE" --model "$MODEL_DIR" \
    --dtype "$MODEL_DTYPE" "${DECODE[@]}" --cuda-graph --modes engine-greedy rgd-shared \
    --json "$WORK/decode_model_graph/decode.json"
fi

"$PY" - "$WORK" "$OUT/gpu_check.json" "$DEVICE" "$DRY" "$MODEL_SOURCE" "$MODEL_DIR" <<'PY'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path
work, out, device, dry = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
model_source, model_dir = sys.argv[5], sys.argv[6]
steps = [json.loads(line) for line in (work / "steps.jsonl").read_text().splitlines()]
for s in steps:
    log = work / f"{s['name']}.log"
    s["log_tail"] = log.read_text(errors="replace").splitlines()[-40:] if log.exists() else []
    s["ok"] = s["rc"] == 0
report = {"device": device, "dry_run": dry, "model_dir": model_source or None,
          "model_random_weights": bool(model_source) and model_dir != model_source, "steps": steps}
junit = work / "kernel_tests.xml"
if junit.exists():
    suite = ET.parse(junit).getroot().find("testsuite")
    report["kernel_tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
for name in ("engine_check", "kernels", "decode_tiny", "decode_tiny_graph", "decode_model", "decode_model_graph"):
    path = f"{name}.json" if name in ("engine_check", "kernels") else f"{name}/decode.json"
    if (work / path).exists():
        report[name] = json.loads((work / path).read_text())
report["ok"] = all(s["ok"] for s in steps)
out.write_text(json.dumps(report, indent=1) + "\n")
print("summary:", ", ".join(f"{s['name']}={'ok' if s['ok'] else 'FAILED rc=%d' % s['rc']} ({s['seconds']}s)"
                            for s in steps))
print("wrote", out)
sys.exit(0 if report["ok"] else 1)
PY
