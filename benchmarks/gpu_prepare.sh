#!/usr/bin/env bash
# Prepare, here (with network), what benchmarks/gpu_check.sh needs on a lent GPU machine, which reaches no network
# and takes at most 64 MiB of working tree:
#   .whl/                        wheels of transformers >= 5.24 (setup.py's floor) and what it needs beyond the GPU
#                                image's packages. The image has transformers 5.17, whose HF attention masks do not fit
#                                the engine's cache (40 engine tests and the GPT-2 checks fail there). About 24 MB.
#   .models/smollm2-135m-shape/  the demo model's config and tokenizer (3.4 MiB); its 538 MB of fp32 weights cannot
#                                travel, so gpu_check.sh builds seeded random weights of the same shape
#                                (benchmarks/shape_model.py): real bytes and kernels, noise tokens.
# Both paths are git-ignored; the device call names them in `carry`:
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl", ".models"], timeout_s=560)
#
#   benchmarks/gpu_prepare.sh            for the image's python3 (CPython 3.12, x86-64)
#   GPU_PY_VERSION=3.11 benchmarks/gpu_prepare.sh .whl-py311   wheels for another interpreter (a rehearsal here)
set -euo pipefail

cd "$(dirname "$0")/.."
DEST="${1:-.whl}"
PY="${PYTHON:-python3}"  # the project's environment: the skeleton comes from the demo preset's converted directory
PYV="${GPU_PY_VERSION:-3.12}"
# The versions the CPU suite runs with. transformers' own needs that the image lacks or may hold too old: huggingface_hub
# 2.x (image: 1.33) and its httpx2 stack, kernels and tomlkit (absent), regex >= 2025.10, typing_extensions >= 4.16.
WHEELS=(transformers==5.25.0 huggingface_hub==2.4.0 kernels==0.19.1 tomlkit==0.15.3 httpx2==2.17.0 httpcore2==2.17.0
        truststore==0.10.5 h11==0.16.0 anyio==4.16.0 idna==3.21 click==8.5.1 hf-xet==1.8.0 regex==2026.12.2
        typing_extensions==4.16.0)

rm -rf "$DEST"
mkdir -p "$DEST"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DEST" "${WHEELS[@]}"
echo "wheels in $DEST: $(ls "$DEST" | wc -l) files, $(du -sh "$DEST" | cut -f1)"

rm -rf .models/smollm2-135m-shape
"$PY" -m benchmarks.shape_model skeleton demo .models/smollm2-135m-shape
echo 'device call: run(command="bash benchmarks/gpu_check.sh", carry=[".whl", ".models"], timeout_s=560)'
