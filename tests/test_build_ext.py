"""build_ext.cuda_home: the CUDA toolkit folder handed to torch's CUDAExtension.

torch's own guess is the folder above `which nvcc`'s bin/; on a machine where nvcc on PATH is a wrapper script
(this one: /usr/local/bin/nvcc runs /usr/local/cuda-13.0/bin/nvcc) that guess has no CUDA headers and the CUDA
extension failed to build. Each test lays out a fake toolkit under tmp_path and checks the folder chosen."""
import importlib.util
import os
import shutil
import stat
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def build_ext(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("rgd_build_ext", ROOT / "build_ext.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setattr(module, "DEFAULT_CUDA_HOME", tmp_path / "no-default")
    return module


def _executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _toolkit(home: Path) -> Path:
    _executable(home / "bin" / "nvcc", "#!/bin/sh\nexit 0\n")
    (home / "include").mkdir(parents=True, exist_ok=True)
    (home / "include" / "cuda_runtime.h").write_text("/* fake */\n")
    return home


def test_wrapper_script_on_path_uses_the_default_toolkit(build_ext, monkeypatch, tmp_path):
    toolkit = _toolkit(tmp_path / "cuda-13.0")
    wrapper = _executable(tmp_path / "local" / "bin" / "nvcc", f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    monkeypatch.setenv("PATH", str(wrapper.parent))
    monkeypatch.setattr(build_ext, "DEFAULT_CUDA_HOME", toolkit)
    torch_guess = Path(shutil.which("nvcc")).parent.parent  # what torch would take without CUDA_HOME
    assert not (torch_guess / "include" / "cuda_runtime.h").exists()
    assert build_ext.cuda_home() == str(toolkit)


def test_symlinked_nvcc_resolves_to_its_toolkit(build_ext, monkeypatch, tmp_path):
    toolkit = _toolkit(tmp_path / "opt" / "cuda-12.9")
    (tmp_path / "bin").mkdir()
    os.symlink(toolkit / "bin" / "nvcc", tmp_path / "bin" / "nvcc")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert build_ext.cuda_home() == str(toolkit)


@pytest.mark.parametrize("var", ["CUDA_HOME", "CUDA_PATH"])
def test_a_user_setting_wins(build_ext, monkeypatch, tmp_path, var):
    _toolkit(tmp_path / "cuda")
    monkeypatch.setenv("PATH", str(tmp_path / "cuda" / "bin"))
    monkeypatch.setenv(var, str(tmp_path / "elsewhere"))
    assert build_ext.cuda_home() == str(tmp_path / "elsewhere")


def test_no_headers_anywhere_names_the_fix(build_ext, monkeypatch, tmp_path):
    nvcc = _executable(tmp_path / "bin" / "nvcc", "#!/bin/sh\nexit 0\n")
    monkeypatch.setenv("PATH", str(nvcc.parent))
    with pytest.raises(RuntimeError) as err:
        build_ext.cuda_home()
    msg = str(err.value)
    assert "cuda_runtime.h" in msg and "set CUDA_HOME" in msg
    assert str(tmp_path) in msg and "no-default" in msg
