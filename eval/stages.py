"""Stages of `rgd-eval run`: named units of work, each keyed by exactly what it reads, cached per chunk.

A `Stage` declares the run arguments it reads (`reads`). Its cache key is those argument values plus the
*content* of the inputs it is handed (prompts, texts, head tensors: `key_of` hashes them), so
- changing an argument a stage reads, or anything upstream that changes its inputs, recomputes it;
- changing an argument it does not read reuses it (a test walks every argument of `rgd-eval run`);
- a chunk's key depends only on the chunk's own inputs, never on who computes it or in which order
  (the unit of resumption, and of sharding across processes).

Cache files are `RUN_DIR/cache/{stage}/{chunk key}.{json|pt}`: a header line with the payload's length and
sha256, then the payload (JSON, or a `torch.save` archive loaded with weights_only=True), written atomically.
A file that is truncated, corrupt or stores another key is reported (warning naming the file) and recomputed.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from tqdm import tqdm

from rgd_engine.atomic import atomic_write

log = logging.getLogger("rgd_eval")
CACHE_FORMAT = 2  # bump when the on-disk record layout changes


@dataclass(frozen=True)
class Stage:
    name: str
    reads: tuple[str, ...]   # `rgd-eval run` argument names (argparse dests) whose values change the output
    doc: str
    fmt: str = "json"        # "json" or "torch" (tensors)

    def __post_init__(self):
        if self.fmt not in ("json", "torch"):
            raise ValueError(f"stage {self.name!r}: fmt must be 'json' or 'torch', got {self.fmt!r}")


def _canonical(obj: Any):
    """JSON-able form of a key part; tensors become their dtype, shape and a hash of their bytes."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        return {"tensor": str(t.dtype), "shape": list(t.shape),
                "sha256": hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()}
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, float) and obj != obj:
        raise ValueError("a stage key cannot contain NaN")
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def key_of(parts: dict) -> dict:
    """The canonical (JSON types, tensors hashed) form of a key."""
    return json.loads(json.dumps(_canonical(parts), sort_keys=True))


def key_hash(parts: dict) -> str:
    """Stable 20-hex-digit hash of a key (key order does not matter)."""
    blob = json.dumps(key_of(parts), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


def _encode(record: dict, fmt: str) -> bytes:
    if fmt == "json":
        return json.dumps(record, allow_nan=False, ensure_ascii=False).encode("utf-8")
    buf = io.BytesIO()
    torch.save(record, buf)
    return buf.getvalue()


def _decode(payload: bytes, fmt: str) -> dict:
    if fmt == "json":
        return json.loads(payload.decode("utf-8"))
    return torch.load(io.BytesIO(payload), weights_only=True)


def write_record(path: Path, record: dict, fmt: str) -> None:
    payload = _encode(record, fmt)
    header = f"rgd-cache {CACHE_FORMAT} {len(payload)} {hashlib.sha256(payload).hexdigest()}\n".encode()
    atomic_write(path, lambda f: (f.write(header), f.write(payload)), "wb")


def read_record(path: Path, fmt: str) -> dict:
    """The record stored in `path`; ValueError saying what is wrong if it is truncated or corrupt."""
    data = path.read_bytes()
    head, sep, payload = data.partition(b"\n")
    fields = head.decode("ascii", "replace").split()
    if not sep or len(fields) != 4 or fields[0] != "rgd-cache" or fields[1] != str(CACHE_FORMAT):
        raise ValueError("no valid header")
    if len(payload) != int(fields[2]):
        raise ValueError(f"payload is {len(payload)} bytes, header says {fields[2]} (truncated?)")
    if hashlib.sha256(payload).hexdigest() != fields[3]:
        raise ValueError("payload checksum mismatch (corrupt)")
    return _decode(payload, fmt)


class StageCache:
    """The run folder's cache: one file per (stage, chunk key); counts hits and computations per stage."""

    def __init__(self, run_dir: str | os.PathLike, args):
        self.root = Path(run_dir) / "cache"
        self.args = args
        self.computed: dict[str, int] = {}
        self.reused: dict[str, int] = {}

    def key(self, stage: Stage, inputs: dict) -> dict:
        """Stage name + the values of the arguments it reads + the content of its inputs."""
        missing = [a for a in stage.reads if not hasattr(self.args, a)]
        if missing:
            raise AttributeError(f"stage {stage.name!r} reads unknown arguments {missing}")
        return key_of({"stage": stage.name, "args": {a: getattr(self.args, a) for a in stage.reads},
                       "inputs": inputs})

    def get(self, stage: Stage, inputs: dict, compute: Callable[[], Any]) -> Any:
        """compute()'s value for this stage and these inputs, from the cache when a valid copy exists."""
        key = self.key(stage, inputs)
        path = self.root / stage.name / f"{key_hash(key)}.{'json' if stage.fmt == 'json' else 'pt'}"
        if path.exists():
            try:
                record = read_record(path, stage.fmt)
                if record.get("key") == key:
                    self.reused[stage.name] = self.reused.get(stage.name, 0) + 1
                    return record["value"]
                log.warning("cache file %s stores another key; recomputing it", path)
            except Exception as e:  # any unreadable file is recomputed, never trusted
                log.warning("cache file %s is unreadable (%s); recomputing it", path, e)
        value = compute()
        if stage.fmt == "json":
            value = json.loads(json.dumps(value, allow_nan=False))  # what a later cache hit returns
        write_record(path, {"key": key, "value": value}, stage.fmt)
        self.computed[stage.name] = self.computed.get(stage.name, 0) + 1
        return value

    def map_chunks(self, stage: Stage, items: list, size: int, inputs_of: Callable[[list], dict],
                   compute: Callable[[list], Any], desc: str | None = None) -> list:
        """Run `compute(chunk)` over consecutive chunks of `items` (each cached under `inputs_of(chunk)`),
        with a progress bar over items; returns the per-chunk values in order."""
        out = []
        with tqdm(total=len(items), desc=desc or stage.name, unit="item", leave=False) as bar:
            for chunk in chunked(items, size):
                out.append(self.get(stage, inputs_of(chunk), lambda chunk=chunk: compute(chunk)))
                bar.update(len(chunk))
        return out


def chunked(items: list, size: int) -> Iterable[list]:
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    for i in range(0, len(items), size):
        yield items[i:i + size]
