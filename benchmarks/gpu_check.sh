#!/usr/bin/env bash
# One-shot GPU check for a lent H100/H200 (sm_90): build the CUDA extension, run the kernel parity and
# sampling tests on CUDA (cuda, triton and torch backends), time each op against torch and against the
# memory floor, then run the decode benchmark if benchmarks/decode.py exists. Everything lands in $OUT.
#
# Assumptions (the machine has no network):
#   - python3 (or $PYTHON) already has torch built with CUDA, triton, pytest and numpy; nothing is
#     downloaded. If torch cannot see a GPU the script stops at the first step with that message.
#   - nvcc is on PATH or in /usr/local/cuda/bin; the package is installed with --no-deps (offline).
#   - Run from anywhere: it cds to the repository root. Budget: under 8 minutes (per-step timeouts).
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/benchmarks/results/gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PATH="$PATH:/usr/local/cuda/bin"
export TORCH_CUDA_ARCH_LIST="9.0"
export MAX_JOBS="${MAX_JOBS:-16}"
failed=()

# step NAME TIMEOUT_S CMD...: run with a timeout, log to $OUT/NAME.log, record a failure and keep going.
step() {
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS rc=0
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  tail -n 25 "$OUT/$name.log"
  echo "== $name: rc=$rc in $((SECONDS - t0))s"
  if [ "$rc" -ne 0 ]; then failed+=("$name(rc=$rc)"); fi
}

# 1. Environment: torch must see the GPU, else nothing below is meaningful.
"$PY" - <<'PY' 2>&1 | tee "$OUT/env.log"
import shutil, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
assert torch.version.cuda is not None, "this torch has no CUDA: install a CUDA build of torch first"
assert torch.cuda.is_available(), "torch sees no GPU"
print("device", torch.cuda.get_device_name(0), "nvcc", shutil.which("nvcc"))
for mod in ("triton", "pytest", "numpy"):
    __import__(mod)
PY
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

# 2. Build both extensions in place (editable install, offline).
step build 300 "$PY" -m pip install --no-build-isolation --no-deps -e .
"$PY" -c "import rgd_engine._C_cuda, rgd_engine._C" 2>&1 | tee -a "$OUT/build.log"

# 3. Parity and sampling tests on CUDA; RGD_REQUIRE_EXT makes a missing extension an error, not a skip.
step tests 150 env RGD_TEST_DEVICE=cuda RGD_REQUIRE_EXT=1 "$PY" -m pytest -q -p no:cacheprovider \
  tests/test_kernels_parity.py tests/test_sampling_stats.py -k "cuda or triton or torch" \
  --junitxml="$OUT/tests.xml" --durations=10

# 4. Kernel timings vs the torch reference, torch-fast and the HBM floor (W read once).
step kernels 90 "$PY" -m benchmarks.kernels --device cuda --json "$OUT/kernels.json"

# 5. End-to-end decode benchmark, when present.
if [ -f benchmarks/decode.py ]; then
  step decode 90 "$PY" -m benchmarks.decode --device cuda --json "$OUT/decode.json"
fi

if [ "${#failed[@]}" -ne 0 ]; then
  echo "FAILED steps: ${failed[*]}"
  exit 1
fi
echo "all steps passed; results in $OUT"
