import json
import os

import pytest
import torch

from rgd_eval.io import read_json, torch_save, write_json, write_text


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
