"""Extension modules for setup.py.

Torch is needed at build time (its headers and BuildExtension), so install without build isolation:

    pip install --no-build-isolation -e .

`rgd_engine._C` (C++17 + OpenMP, CPU) is always built. `rgd_engine._C_cuda` is built only when the
installed torch has CUDA (`torch.version.cuda`) and `nvcc` is on PATH; no GPU is needed to build it.
Set TORCH_CUDA_ARCH_LIST (e.g. "9.0") to choose the CUDA architectures, CUDA_HOME to choose the toolkit.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DEFAULT_CUDA_HOME = Path("/usr/local/cuda")


def _sources(folder: str, *suffixes: str) -> list[str]:
    # Relative paths: setuptools rejects absolute source paths in editable builds.
    return sorted(str(p.relative_to(ROOT)) for s in suffixes for p in (ROOT / folder).glob(f"*{s}"))


def cuda_buildable() -> bool:
    import torch

    return torch.version.cuda is not None and shutil.which("nvcc") is not None


def cuda_home() -> str:
    """The CUDA toolkit folder (the one with include/cuda_runtime.h) for torch's CUDAExtension.

    torch takes CUDA_HOME, else the folder above `which nvcc`'s bin/. Where nvcc on PATH is a wrapper script
    (e.g. /usr/local/bin/nvcc running /usr/local/cuda-13.0/bin/nvcc) that guess is /usr/local, which has no CUDA
    headers, and the build stops at its first CUDA object with `cuda_runtime.h: No such file`; so look for the
    headers.
    """
    set_by_user = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if set_by_user:
        return set_by_user
    nvcc = shutil.which("nvcc")
    candidates = [Path(nvcc).resolve().parent.parent] if nvcc else []
    candidates.append(DEFAULT_CUDA_HOME)
    for home in candidates:
        if (home / "include" / "cuda_runtime.h").is_file():
            return str(home)
    raise RuntimeError(
        f"no CUDA toolkit with include/cuda_runtime.h in {', '.join(map(str, candidates))} "
        f"(nvcc on PATH: {nvcc or 'none'}): set CUDA_HOME to the toolkit's folder")


def extension_modules():
    with_cuda = cuda_buildable()
    if with_cuda:
        # Before importing cpp_extension, which reads CUDA_HOME once at import.
        os.environ["CUDA_HOME"] = cuda_home()
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    # No -march=native (the build must run on any x86-64) and no -ffast-math (parity with the reference).
    # No -std flag: torch picks the standard its headers need (C++20 for torch 2.13); the kernel sources
    # themselves are C++17 and tests/test_cuda_compile.py compiles them standalone with -std=c++17.
    cxx = ["-O3", "-fopenmp"]
    modules = [
        CppExtension(
            "rgd_engine._C",
            _sources("csrc/cpu", ".cpp"),
            include_dirs=[str(ROOT / "csrc/cpu"), str(ROOT / "csrc")],
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
            libraries=["gomp"],
        )
    ]
    if with_cuda:
        modules.append(
            CUDAExtension(
                "rgd_engine._C_cuda",
                _sources("csrc/cuda", ".cu", ".cpp"),
                include_dirs=[str(ROOT / "csrc/cuda"), str(ROOT / "csrc")],
                extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]},
            )
        )
    return modules


def build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension
