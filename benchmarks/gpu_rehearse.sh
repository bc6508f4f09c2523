#!/usr/bin/env bash
# Rehearse here, with no GPU, what benchmarks/gpu_check.sh meets on a lent machine, so its 15 minutes are not spent on
# a build or import failure: a CPython 3.12 venv with the GPU image's versions (torch 2.11.0+cu130, triton 3.6,
# transformers 5.17; /work/.library/device/KINDS.md), the wheels gpu_prepare.sh carries installed the way the device
# installs them (a private folder first on PYTHONPATH), both extensions built with nvcc from setup.py's extension list
# with no CUDA_HOME set, as on the device (here through `pip install -e .`, which the suite needs for rgd_eval), the
# CUDA binding's input checks called, gpu_check.sh --dry-run, and the whole CPU suite.
# Needs nvcc and network (about 5 GB: torch's CUDA libraries); 15 - 20 minutes on 2 cores.
#
#   benchmarks/gpu_prepare.sh && benchmarks/gpu_rehearse.sh [DIR]     (DIR: default /tmp/rgd-gpu-rehearsal)
#
# Differs from the image in one pin: numpy < 2.4. triton 3.6's interpreter (the dry run's CPU kernels) fails on
# numpy >= 2.4 ("only 0-dimensional arrays can be converted to Python scalars"); on the GPU triton compiles and the
# image's numpy 2.5 is fine. The project's own dependencies the image lacks (rouge-score, rank-bm25, gguf, fastapi,
# uvicorn, openai) are added for the suite only; the GPU check imports none of them.
set -euo pipefail

cd "$(dirname "$0")/.."
DIR="${1:-/tmp/rgd-gpu-rehearsal}"
PY312="${PY312:-python3.12}"
[ -n "$(ls .whl/*.whl 2>/dev/null)" ] || { echo "no wheels in .whl/: run benchmarks/gpu_prepare.sh first" >&2; exit 2; }
rm -rf "$DIR"
mkdir -p "$DIR/src"
"$PY312" -m venv "$DIR/venv"
VPY="$DIR/venv/bin/python"
"$VPY" -m pip install -q torch==2.11.0 transformers==5.17.0 tokenizers==0.23.2 huggingface_hub==1.33.0 \
  safetensors==0.8.0 accelerate==1.15.0 "numpy<2.4" pytest scipy matplotlib packaging tqdm ninja \
  rouge-score rank-bm25 gguf fastapi uvicorn "openai>=3.63"

# The working tree as it is (tracked and untracked, not ignored) plus the carried wheels, like a device call.
git ls-files -z -co --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$DIR/src"
cp -r .whl "$DIR/src/.whl"
cd "$DIR/src"
"$VPY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$DIR/site" .whl/*.whl
export PATH="$PATH:/usr/local/cuda/bin" TORCH_CUDA_ARCH_LIST="9.0" MAX_JOBS="${MAX_JOBS:-2}"
unset CUDA_HOME CUDA_PATH

echo "== build (both extensions)"
t0=$SECONDS
"$VPY" -m pip install -q --no-deps --no-build-isolation -e . > "$DIR/build.log" 2>&1 \
  || { tail -n 30 "$DIR/build.log"; exit 1; }
echo "built in $((SECONDS - t0)) s"
PYTHONPATH="$DIR/site" "$VPY" - <<'PY'
import torch, transformers, triton
import rgd_engine._C, rgd_engine._C_cuda as cuda_ext
print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)
h, w = torch.randn(2, 64), torch.randn(100, 64)
outs = torch.empty(2, 5), torch.empty(2, 5, dtype=torch.long), torch.empty(2)
try:
    cuda_ext.lmhead_topk_out(h, w, 5, *outs)
except RuntimeError as e:  # a CPU tensor must be refused by the binding's checks, not reach a kernel launch
    assert "must be a CUDA tensor" in str(e), e
    print("binding check:", str(e).splitlines()[0])
else:
    raise SystemExit("the CUDA binding accepted CPU tensors")
PY

echo "== gpu_check.sh --dry-run"
PYTHON="$VPY" OUT="$DIR/out" bash benchmarks/gpu_check.sh --dry-run > "$DIR/dry_run.log" 2>&1 \
  || { tail -n 40 "$DIR/dry_run.log"; exit 1; }
grep summary "$DIR/dry_run.log"

echo "== the CPU suite"
PYTHONPATH="$DIR/site" RGD_REQUIRE_EXT=1 "$VPY" -m pytest -q -p no:cacheprovider tests 2>&1 \
  | tee "$DIR/suite.log" | tail -n 3
