"""The kernel sources compile standalone: every .cu with nvcc for sm_90 (H100/H200), without torch headers,
and the CPU kernels as plain C++17 + OpenMP. The CUDA binding compiles against torch's headers and links to the
kernels, even where torch has no CUDA (its extension is then never built). Needs no GPU; skips with a reason
when the compiler or headers are absent."""
import os
import re
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CU_FILES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))


def test_there_are_cuda_sources():
    assert CU_FILES, "csrc/cuda has no .cu files"


@pytest.mark.parametrize("src", CU_FILES, ids=lambda p: p.name)
def test_nvcc_compiles_for_sm90(src, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH: cannot compile the CUDA kernels here")
    cmd = [nvcc, "-gencode=arch=compute_90,code=sm_90", "-std=c++17", "-O3", f"-I{ROOT / 'csrc' / 'cuda'}",
           "-c", str(src), "-o", str(tmp_path / (src.stem + ".o"))]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout}\n{res.stderr}"


def test_cpu_kernels_are_plain_cxx17():
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler on PATH")
    src = ROOT / "csrc" / "cpu" / "kernels.cpp"
    cmd = [cxx, "-std=c++17", "-fopenmp", "-Wall", "-Werror", "-fsyntax-only", f"-I{ROOT / 'csrc' / 'cpu'}", str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr}"


def _nvcc_include_dirs(nvcc: str) -> list[Path]:
    # Where nvcc's own headers are: its dry run prints the include flags it hands the host compiler.
    res = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull], capture_output=True,
                         text=True, timeout=60)
    dirs = []
    for line in (res.stdout + res.stderr).splitlines():
        m = re.match(r"#\$ (?:SYSTEM_)?INCLUDES=(.*)", line)
        if m:
            dirs += [Path(a.removeprefix("-I")) for a in shlex.split(m.group(1)) if a != "-isystem"]
    return dirs


def _launchers(nm: str, obj: Path, which: str) -> set[str]:
    # The rgd::cuda symbols that obj defines or calls (which: --defined-only / --undefined-only), demangled.
    out = subprocess.run([nm, "-C", which, str(obj)], capture_output=True, text=True, check=True).stdout
    lines = (re.match(r"\s*(?:[0-9a-f]+\s+)?\w\s+(.*)", line) for line in out.splitlines())
    return {m.group(1) for m in lines if m and "rgd::cuda::" in m.group(1)}


def test_cuda_binding_compiles_and_links_to_the_kernels(tmp_path):
    """csrc/cuda/bindings.cpp compiles as torch's extension build compiles it (host compiler, torch's include
    paths, ABI and C++20), with -Wall -Wextra -Werror on our code; and every kernel launcher it calls is one the
    .cu files define: a missing instantiation would otherwise only show as an import error on a CUDA machine."""
    torch = pytest.importorskip("torch")
    from torch.utils import cpp_extension

    nvcc, cxx, nm = shutil.which("nvcc"), shutil.which("g++") or shutil.which("c++"), shutil.which("nm")
    if nvcc is None or cxx is None or nm is None:
        pytest.skip(f"needs nvcc, a C++ compiler and nm on PATH (nvcc={nvcc}, c++={cxx}, nm={nm})")
    cuda_dirs = _nvcc_include_dirs(nvcc)
    if not any((d / "cuda_runtime_api.h").exists() for d in cuda_dirs):
        pytest.skip(f"nvcc's CUDA headers (cuda_runtime_api.h) not found in {cuda_dirs}")
    torch_dirs = [Path(d) for d in cpp_extension.include_paths()]
    if not any((d / "c10" / "cuda" / "CUDAGuard.h").exists() for d in torch_dirs):
        pytest.skip(f"this torch ships no c10/cuda headers (include paths {torch_dirs})")

    # Third-party headers as -isystem, so -Werror judges only csrc. The CPU wheel lacks the generated
    # c10/cuda/impl/cuda_cmake_macros.h, which only sets Windows export macros: skip it.
    system = [f"-isystem{d}" for d in [*torch_dirs, *cuda_dirs, Path(sysconfig.get_paths()["include"])]]
    src, binding = ROOT / "csrc" / "cuda" / "bindings.cpp", tmp_path / "bindings.o"
    cmd = [cxx, "-std=c++20", "-fPIC", "-Wall", "-Wextra", "-Werror", "-DTORCH_EXTENSION_NAME=_C_cuda",
           f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
           *system, f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'csrc' / 'cuda'}", "-c", str(src), "-o", str(binding)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr}"

    defined = set()
    for src in CU_FILES:
        obj = tmp_path / (src.stem + ".o")
        cmd = [nvcc, "-gencode=arch=compute_90,code=sm_90", "-std=c++17", f"-I{ROOT / 'csrc' / 'cuda'}", "-c",
               str(src), "-o", str(obj)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout}\n{res.stderr}"
        defined |= _launchers(nm, obj, "--defined-only")
    called = _launchers(nm, binding, "--undefined-only")
    assert called, "bindings.o calls no rgd::cuda launcher: the symbol filter is stale"
    missing = called - defined
    assert not missing, f"launchers the binding calls but no .cu defines: {sorted(missing)}"
