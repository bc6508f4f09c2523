"""Atomic file writes and a resumable, input-keyed stage cache for run directories."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch

from rgd_engine.atomic import atomic_write


def write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), "w")


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    # allow_nan=False: NaN/inf are not JSON; callers must encode them (e.g. None) explicitly.
    text = json.dumps(obj, indent=indent, allow_nan=False, ensure_ascii=False) + "\n"
    write_text(path, text)


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def torch_save(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, lambda f: torch.save(obj, f), "wb")


def key_hash(key_dict: dict) -> str:
    """Stable 16-hex-digit hash of a JSON-serialisable dict (key order does not matter)."""
    blob = json.dumps(key_dict, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def cached_stage(run_dir: str | os.PathLike, name: str, key_dict: dict, fn: Callable[[], Any],
                 fmt: str = "json") -> Any:
    """Return fn()'s output for these inputs, computing it only if no cached copy exists.

    The cache file is run_dir/cache/{name}-{hash(key_dict)}.{json|pt}; it stores the key next to the value
    and a mismatching key (hash collision, hand-edited file) is recomputed rather than trusted.
    fmt="json" for JSON-serialisable values, fmt="torch" for tensors / nested containers of tensors
    (loaded with weights_only=True).
    """
    if fmt not in ("json", "torch"):
        raise ValueError(f"cached_stage: fmt must be 'json' or 'torch', got {fmt!r}")
    # Round-trip the key through JSON so the stored and the compared key have the same types (tuples -> lists).
    key = json.loads(json.dumps(key_dict, sort_keys=True, default=str))
    path = Path(run_dir) / "cache" / f"{name}-{key_hash(key_dict)}.{'json' if fmt == 'json' else 'pt'}"
    if path.exists():
        stored = read_json(path) if fmt == "json" else torch.load(path, weights_only=True)
        if stored.get("key") == key:
            return stored["value"]
    value = fn()
    if fmt == "json":
        # Return what a later cache hit would return (JSON types), so callers see one behaviour.
        value = json.loads(json.dumps(value, allow_nan=False))
    record = {"key": key, "value": value}
    if fmt == "json":
        write_json(path, record)
    else:
        torch_save(path, record)
    return value
