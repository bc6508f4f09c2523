"""Plot a `benchmarks.decode` JSON: tokens/s per mode, and rgd-shared tokens/s vs k and vs batch.

    python -m benchmarks.plot_decode benchmarks/results/decode.json [--out decode.png]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _modes_panel(ax, results: dict):
    rows = [r for r in results.values() if r.get("tokens_per_s") is not None]
    names = [r["mode"] for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["tokens_per_s"] for r in rows], 0.4, label="end to end")
    ax.bar([i + 0.2 for i in x], [r["decode_tokens_per_s"] or 0 for r in rows], 0.4, label="decode only")
    ax.set_xticks(list(x), names, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("tokens/s (batch total)")
    ax.legend()


def _scaling_panel(ax, scaling: list[dict], key: str, fixed: str, fixed_value):
    pts = sorted((r[key], r["tokens_per_s"]) for r in scaling if r[fixed] == fixed_value)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-")
    ax.set_xlabel(key)
    ax.set_ylabel("tokens/s")
    ax.set_title(f"rgd-shared, {fixed}={fixed_value}")


def plot(report: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scaling = report.get("scaling") or []
    fig, axes = plt.subplots(1, 3 if scaling else 1, figsize=(15 if scaling else 6, 4.5), squeeze=False)
    _modes_panel(axes[0][0], report["results"])
    cfg = report["config"]
    axes[0][0].set_title(f"{cfg['params']['model']} P={cfg['params']['prompt_len']} {cfg['machine']['cpu'][:28]}")
    if scaling:
        k = cfg["params"]["k"]
        _scaling_panel(axes[0][1], scaling, "k", "batch", 1)
        _scaling_panel(axes[0][2], scaling, "batch", "k", k)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.plot_decode")
    p.add_argument("json", type=Path)
    p.add_argument("--out", type=Path, default=None, help="PNG path (default: next to the JSON)")
    a = p.parse_args(argv)
    out = a.out or a.json.with_suffix(".png")
    plot(json.loads(a.json.read_text()), out)
    print(out)


if __name__ == "__main__":
    main()
