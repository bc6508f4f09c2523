"""The stage cache: keys from exactly what a stage reads, integrity of cache files, every run argument declared."""
import argparse
import logging
import types

import pytest
import torch

from rgd_eval.pipeline import STAGES
from rgd_eval.run_args import UNCACHED, add_arguments
from rgd_eval.stages import Stage, StageCache, key_hash, read_record, write_record

STAGE = Stage("demo", ("model", "k"), "a test stage")
TSTAGE = Stage("demo-t", ("model",), "a test stage with tensors", fmt="torch")


def _cache(tmp_path, **args):
    return StageCache(tmp_path, types.SimpleNamespace(**{"model": "m", "k": 3, "other": 1, **args}))


def test_key_hash_ignores_order_sees_values_and_tensor_content(gen):
    assert key_hash({"a": 1, "b": [1, 2]}) == key_hash({"b": [1, 2], "a": 1})
    assert key_hash({"a": 1}) != key_hash({"a": 2})
    t = torch.randn(5, generator=gen)
    assert key_hash({"h": t}) == key_hash({"h": t.clone()})
    u = t.clone()
    u[3] += 1e-6
    assert key_hash({"h": t}) != key_hash({"h": u})
    assert key_hash({"h": t}) != key_hash({"h": t.double()})


def test_get_computes_once_per_key_and_only_for_read_arguments(tmp_path):
    calls = []
    fn = lambda: calls.append(1) or {"x": (1, 2)}  # noqa: E731
    assert _cache(tmp_path).get(STAGE, {"p": "a"}, fn) == {"x": [1, 2]}  # JSON types even on the first call
    assert _cache(tmp_path, other=99).get(STAGE, {"p": "a"}, fn) == {"x": [1, 2]}  # `other` is not read
    assert len(calls) == 1
    _cache(tmp_path, k=4).get(STAGE, {"p": "a"}, fn)   # `k` is read
    _cache(tmp_path).get(STAGE, {"p": "b"}, fn)        # inputs differ
    assert len(calls) == 3
    with pytest.raises(AttributeError, match="unknown arguments"):
        _cache(tmp_path).get(Stage("bad", ("nope",), ""), {}, fn)


def test_a_raised_revision_recomputes_and_an_unchanged_one_reuses(tmp_path):
    """A stage whose code now rounds differently (Stage.revision) must not reuse chunks of the old code."""
    import dataclasses

    calls = []
    fn = lambda: calls.append(1) or {"x": len(calls)}  # noqa: E731
    old, new = STAGE, dataclasses.replace(STAGE, revision=STAGE.revision + 1)
    assert _cache(tmp_path).get(old, {"p": "a"}, fn) == {"x": 1}
    assert _cache(tmp_path).get(new, {"p": "a"}, fn) == {"x": 2}
    assert _cache(tmp_path).get(new, {"p": "a"}, fn) == {"x": 2} and len(calls) == 2


def _files(tmp_path, stage):
    return sorted((tmp_path / "cache" / stage.name).iterdir())


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "other-key"])
def test_damaged_cache_file_is_named_and_recomputed(tmp_path, gen, caplog, damage):
    value = torch.randn(4, 3, generator=gen)
    cache = _cache(tmp_path)
    cache.get(TSTAGE, {"p": 1}, lambda: {"h": value})
    (path,) = _files(tmp_path, TSTAGE)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])
    elif damage == "garbage":
        path.write_bytes(b"not a cache file")
    else:
        record = read_record(path, "torch")
        record["key"] = {"stage": "tampered"}
        write_record(path, record, "torch")
    with caplog.at_level(logging.WARNING, logger="rgd_eval"):
        got = _cache(tmp_path).get(TSTAGE, {"p": 1}, lambda: {"h": value + 1})
    assert torch.equal(got["h"], value + 1)  # recomputed, not trusted
    assert str(path) in caplog.text
    assert torch.equal(read_record(path, "torch")["value"]["h"], value + 1)  # and repaired


def test_map_chunks_keys_depend_only_on_each_chunk(tmp_path):
    seen = []

    def compute(chunk):
        seen.append(list(chunk))
        return [x * 10 for x in chunk]

    cache = _cache(tmp_path)
    assert cache.map_chunks(STAGE, [1, 2, 3, 4, 5], 2, lambda c: {"items": c}, compute) == [[10, 20], [30, 40], [50]]
    seen.clear()
    # Same chunks in another run (any order of computation): all reused; one new chunk: only it computed.
    assert _cache(tmp_path).map_chunks(STAGE, [1, 2, 3, 4, 6], 2, lambda c: {"items": c}, compute)[2] == [60]
    assert seen == [[6]]


def _run_parser():
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p


def test_every_run_argument_is_read_by_a_stage_or_declared_uncached():
    dests = {a.dest for a in _run_parser()._actions if a.dest != "help"}
    read = {a for s in STAGES.values() for a in s.reads}
    assert read <= dests, read - dests
    assert not read & set(UNCACHED), read & set(UNCACHED)  # one place per argument
    assert dests == read | set(UNCACHED), dests ^ (read | set(UNCACHED))
