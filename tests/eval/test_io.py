import json
import os

import pytest
import torch

from rgd_eval.io import cached_stage, key_hash, read_json, torch_save, write_json, write_text


def test_write_json_roundtrip_and_no_temp_files(tmp_path, gen):
    obj = {"a": [1, 2.5, None], "b": {"c": "é"}, "r": torch.rand(3, generator=gen).tolist()}
    write_json(tmp_path / "sub" / "x.json", obj)
    assert json.loads((tmp_path / "sub" / "x.json").read_text(encoding="utf-8")) == obj
    assert os.listdir(tmp_path / "sub") == ["x.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "sub" / "x.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_write_json_rejects_nan_and_keeps_old_file(tmp_path):
    write_json(tmp_path / "x.json", {"v": 1})
    with pytest.raises(ValueError):
        write_json(tmp_path / "x.json", {"v": float("nan")})
    assert read_json(tmp_path / "x.json") == {"v": 1}
    assert os.listdir(tmp_path) == ["x.json"]


def test_write_text_and_torch_save(tmp_path, gen):
    write_text(tmp_path / "a.md", "hello\n")
    assert (tmp_path / "a.md").read_text() == "hello\n"
    t = torch.randn(4, 5, generator=gen)
    torch_save(tmp_path / "t.pt", {"t": t})
    assert torch.equal(torch.load(tmp_path / "t.pt", weights_only=True)["t"], t)


def test_key_hash_ignores_key_order_and_sees_values():
    assert key_hash({"a": 1, "b": [1, 2]}) == key_hash({"b": [1, 2], "a": 1})
    assert key_hash({"a": 1}) != key_hash({"a": 2})


@pytest.mark.parametrize("fmt", ["json", "torch"])
def test_cached_stage_computes_once_per_key(tmp_path, gen, fmt):
    calls = []
    value = torch.randn(3, generator=gen)

    def fn():
        calls.append(1)
        return {"x": value.tolist() if fmt == "json" else value}

    a = cached_stage(tmp_path, "feat", {"model": "m", "n": 3}, fn, fmt=fmt)
    b = cached_stage(tmp_path, "feat", {"n": 3, "model": "m"}, fn, fmt=fmt)
    assert len(calls) == 1
    if fmt == "json":
        assert a == b == {"x": value.tolist()}
    else:
        assert torch.equal(a["x"], value) and torch.equal(b["x"], value)
    cached_stage(tmp_path, "feat", {"model": "m", "n": 4}, fn, fmt=fmt)
    assert len(calls) == 2


def test_cached_stage_recomputes_when_stored_key_differs(tmp_path):
    calls = []
    cached_stage(tmp_path, "s", {"k": 1}, lambda: calls.append(1) or [1])
    (path,) = (tmp_path / "cache").iterdir()
    stored = read_json(path)
    stored["key"] = {"k": "tampered"}
    write_json(path, stored)
    assert cached_stage(tmp_path, "s", {"k": 1}, lambda: calls.append(1) or [2]) == [2]
    assert len(calls) == 2


def test_cached_stage_json_returns_json_types_on_first_call(tmp_path):
    first = cached_stage(tmp_path, "s", {"k": 1}, lambda: {"t": (1, 2)})
    again = cached_stage(tmp_path, "s", {"k": 1}, lambda: {"t": (9, 9)})
    assert first == again == {"t": [1, 2]}
