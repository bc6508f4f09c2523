"""A real model's shape without its weights: what a GPU check can carry, and the seeded random model built from it.

    python -m benchmarks.shape_model skeleton demo .models/smollm2-135m-shape      # here: config + tokenizer
    python -m benchmarks.shape_model materialize .models/smollm2-135m-shape DIR    # there: random weights, same shape

The device machine takes at most 64 MiB of working tree and reaches no network, so the demo model's 538 MB of fp32
weights cannot travel. A skeleton (config.json, generation config, tokenizer and chat template: a few MB) can; on
the machine, `materialize` builds the same architecture with weights drawn by its own initialisation (at std
INIT_RANGE) under a fixed seed and saves an ordinary HF directory. Every tensor has the real model's shape and dtype, so weight
bytes, KV sizes and the decode step's kernels are the real ones; the tokens are not (random weights write noise).
Decode benchmarks ignore EOS, so their speed does not depend on the weights' values.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def _is_weights(path: Path) -> bool:
    return path.name.endswith(WEIGHT_SUFFIXES) or path.name.endswith(".safetensors.index.json")


def skeleton(src: Path, dst: Path) -> list[str]:
    """Copy every file of the HF directory `src` but its weights to `dst`; returns the copied names."""
    if not (src / "config.json").is_file():
        raise SystemExit(f"shape_model: {src} is not an HF model directory (no config.json)")
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in sorted(src.iterdir()):
        if path.is_file() and not _is_weights(path):
            shutil.copy2(path, dst / path.name)
            copied.append(path.name)
    (dst / "SHAPE_MODEL.json").write_text(json.dumps(
        {"source": str(src), "note": "config and tokenizer only; `python -m benchmarks.shape_model materialize` "
                                     "builds seeded random weights of this shape"}, indent=1) + "\n")
    return copied


# The config's own initializer_range (0.02 for SmolLM2) leaves a random 135M model's top two logits tied within
# fp32 rounding (measured: smallest top-1 - top-2 gap 0.0000 over 32 positions), so a greedy parity check could
# flip on a tie. 0.2, the tests' tiny models' setting, gives a smallest gap of 0.04 with every projection output
# below 700 in magnitude (finite in float16).
INIT_RANGE = 0.2


def materialize(src: Path, dst: Path, seed: int = 0, init_range: float = INIT_RANGE) -> Path:
    """An HF directory at `dst` with src's config and tokenizer and weights drawn under `seed` (normal, std
    `init_range`, through the architecture's own initialisation)."""
    import torch  # here, not at the top: `skeleton` runs in an interpreter without torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (src / "config.json").is_file():
        raise SystemExit(f"shape_model: {src} has no config.json")
    config = AutoConfig.from_pretrained(src)
    config.initializer_range = init_range
    torch.manual_seed(seed)
    dtype = getattr(config, "dtype", None) or torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    skeleton(src, dst)
    (dst / "SHAPE_MODEL.json").write_text(json.dumps(
        {"source": str(src), "seed": seed, "initializer_range": init_range,
         "parameters": sum(p.numel() for p in model.parameters()),
         "note": "random weights of the source's shape; tokens are noise, shapes and bytes are real"}, indent=1)
        + "\n")
    model.save_pretrained(dst)
    return dst


def _source_dir(spec: str) -> Path:
    path = Path(spec)
    if path.is_dir():
        return path
    from rgd_engine.models.loading import preset_model_dir

    return preset_model_dir(spec)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("skeleton", help="copy an HF directory (or a preset's converted one) without its weights")
    s.add_argument("src", help="an HF model directory or a model preset (e.g. demo)")
    s.add_argument("dst", type=Path)
    m = sub.add_parser("materialize", help="seeded random weights for a skeleton (or any config directory)")
    m.add_argument("src", type=Path)
    m.add_argument("dst", type=Path)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--init-range", type=float, default=INIT_RANGE, help="std of the drawn weights (default %(default)s)")
    args = p.parse_args(argv)
    if args.cmd == "skeleton":
        names = skeleton(_source_dir(args.src), args.dst)
        size = sum((args.dst / n).stat().st_size for n in names)
        print(f"skeleton of {args.src} in {args.dst}: {', '.join(names)} ({size / 2 ** 20:.1f} MiB)")
    else:
        out = materialize(args.src, args.dst, seed=args.seed, init_range=args.init_range)
        print(f"materialized {args.src} with seed {args.seed} in {out}")


if __name__ == "__main__":
    main()
