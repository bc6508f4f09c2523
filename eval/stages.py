"""Stages of `rgd-eval run`: named units of work, each keyed by exactly what it reads, cached per chunk.

A `Stage` declares the run arguments it reads (`reads`). Its cache key is those argument values plus the
*content* of the inputs it is handed (prompts, texts, head tensors: `key_of` hashes them), so
- changing an argument a stage reads, or anything upstream that changes its inputs, recomputes it;
- changing an argument it does not read reuses it (a test walks every argument of `rgd-eval run`);
- a chunk's key depends only on the chunk's own inputs, never on who computes it or in which order
  (the unit of resumption, and of sharding across processes: `map_chunks` computes the chunks this process owns,
  rgd_eval.distributed).

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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from tqdm import tqdm

from rgd_engine.atomic import atomic_write

from .distributed import ShardPending, Workers

log = logging.getLogger("rgd_eval")
CACHE_FORMAT = 2  # bump when the on-disk record layout changes


@dataclass(frozen=True)
class Stage:
    name: str
    reads: tuple[str, ...]   # `rgd-eval run` argument names (argparse dests) whose values change the output
    doc: str
    fmt: str = "json"        # "json" or "torch" (tensors)
    # True when no later stage reads its output (only the final global steps do): several workers then need not
    # wait for each other's chunks of it (rgd_eval.distributed)
    terminal: bool = False
    # Raised when the stage's computation changes its outputs (e.g. their rounding) for the same reads and
    # inputs: a run folder then recomputes it instead of mixing chunks of the old and the new code.
    revision: int = 0

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
    """The run folder's cache: one file per (stage, chunk key); counts hits and computations per stage.
    workers (rgd_eval.distributed): which chunks this process computes when several processes share the run."""

    def __init__(self, run_dir: str | os.PathLike, args, workers: Workers | None = None):
        self.root = Path(run_dir) / "cache"
        self.args = args
        self.workers = workers or Workers()
        self.computed: dict[str, int] = {}
        self.reused: dict[str, int] = {}

    def key(self, stage: Stage, inputs: dict) -> dict:
        """Stage name (and revision) + the values of the arguments it reads + the content of its inputs."""
        missing = [a for a in stage.reads if not hasattr(self.args, a)]
        if missing:
            raise AttributeError(f"stage {stage.name!r} reads unknown arguments {missing}")
        parts = {"stage": stage.name, "args": {a: getattr(self.args, a) for a in stage.reads}, "inputs": inputs}
        if stage.revision:
            parts["revision"] = stage.revision
        return key_of(parts)

    def path(self, stage: Stage, key: dict) -> Path:
        return self.root / stage.name / f"{key_hash(key)}.{'json' if stage.fmt == 'json' else 'pt'}"

    def _read(self, stage: Stage, key: dict, path: Path) -> tuple[bool, Any]:
        """(True, value) from a valid copy in the cache; (False, None) if there is none (a file that is not a
        valid copy is named in a warning, to be recomputed)."""
        if path.exists():
            try:
                record = read_record(path, stage.fmt)
                if record.get("key") == key:
                    self.reused[stage.name] = self.reused.get(stage.name, 0) + 1
                    return True, record["value"]
                log.warning("cache file %s stores another key; recomputing it", path)
            except Exception as e:  # any unreadable file is recomputed, never trusted
                log.warning("cache file %s is unreadable (%s); recomputing it", path, e)
        return False, None

    def _compute(self, stage: Stage, key: dict, path: Path, compute: Callable[[], Any]) -> Any:
        value = compute()
        if stage.fmt == "json":
            value = json.loads(json.dumps(value, allow_nan=False))  # what a later cache hit returns
        write_record(path, {"key": key, "value": value}, stage.fmt)
        self.computed[stage.name] = self.computed.get(stage.name, 0) + 1
        return value

    def get(self, stage: Stage, inputs: dict, compute: Callable[[], Any]) -> Any:
        """compute()'s value for this stage and these inputs, from the cache when a valid copy exists."""
        key = self.key(stage, inputs)
        path = self.path(stage, key)
        found, value = self._read(stage, key, path)
        return value if found else self._compute(stage, key, path, compute)

    def map_chunks(self, stage: Stage, items: list, size: int, inputs_of: Callable[[list], dict],
                   compute: Callable[[list], Any], desc: str | None = None) -> list:
        """Run `compute(chunk)` over consecutive chunks of `items` (each cached under `inputs_of(chunk)`),
        with a progress bar over items; returns the per-chunk values in order.

        Under several workers (rgd_eval.distributed) this process computes only the chunks it owns, then
        - a stage a later stage reads: returns every chunk, after a barrier (torchrun), or raises ShardPending
          while another shard's chunk is missing (--shard);
        - a terminal stage (no later stage reads it): returns this process's own chunks only, without waiting;
          rank 0 reads them all after Workers.merge."""
        w = self.workers
        chunks = list(chunked(items, size))
        keys = [self.key(stage, inputs_of(c)) for c in chunks]
        paths = [self.path(stage, k) for k in keys]
        values: dict[int, Any] = {}
        mine = w.owns(len(chunks), paths[0].stem) if chunks else []
        with tqdm(total=len(items), desc=desc or stage.name, unit="item", leave=False,
                  disable=w.mode == "torchrun" and w.rank != 0) as bar:
            def progress():  # items of the chunks done by any worker: own values, the others' files
                if not bar.disable:
                    bar.update(sum(len(c) for j, c in enumerate(chunks)
                                   if j in values or (w.world > 1 and paths[j].exists())) - bar.n)

            for j in mine:
                found, values[j] = self._read(stage, keys[j], paths[j])
                if not found:
                    t = time.time()
                    values[j] = self._compute(stage, keys[j], paths[j], lambda c=chunks[j]: compute(c))
                    log.info("%s: chunk %d of %d (%d items) computed in %.1f s", desc or stage.name, j + 1,
                             len(chunks), len(chunks[j]), time.time() - t)
                progress()
            if stage.terminal or w.complete:
                return [values[j] for j in mine]
            w.barrier(progress)  # torchrun: every rank's share of this stage is in the cache
            others = [j for j in range(len(chunks)) if j not in values]
            for j in others:
                found, value = self._read(stage, keys[j], paths[j])
                if found:
                    values[j] = value
            missing = [j for j in others if j not in values]
            if missing and w.mode == "shard":
                raise ShardPending(
                    f"shard {w.rank}/{w.world} stops at stage {stage.name!r} (having computed "
                    f"{sum(self.computed.values())} chunks): {len(missing)} of the stage's {len(chunks)} chunks "
                    "belong to other shards and are not in the cache yet, and a later stage reads them; rerun this "
                    "shard once the others are done, or finish with a plain `rgd-eval run`")
            for j in missing:  # torchrun: only if the owner's file is not visible here (or was damaged)
                log.warning("%s: chunk %s is missing after the barrier; computing it here", stage.name, paths[j])
                values[j] = self._compute(stage, keys[j], paths[j], lambda c=chunks[j]: compute(c))
            progress()
        return [values[j] for j in range(len(chunks))]


def chunked(items: list, size: int) -> Iterable[list]:
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    for i in range(0, len(items), size):
        yield items[i:i + size]
