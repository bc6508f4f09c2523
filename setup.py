"""Build and install rgd-engine (package `rgd_engine`) and its evaluation package (`rgd_eval`, folder eval/).

The C++ CPU extension `rgd_engine._C` is always built. The CUDA extension `rgd_engine._C_cuda` is built only
where torch has CUDA and nvcc exists.
"""
from setuptools import find_packages, setup

from build_ext import extension_modules, build_ext_class

setup(
    name="rgd-engine",
    version="0.1.0",
    description="Reward-guided decoding engine with fused kernels, and the rgd-eval personalized-alignment study",
    python_requires=">=3.10",
    packages=find_packages(include=["rgd_engine", "rgd_engine.*"]) + ["rgd_eval"] + [
        "rgd_eval." + p for p in find_packages(where="eval")],
    package_dir={"rgd_eval": "eval"},
    package_data={"rgd_eval": ["data/*", "data/**/*"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.3",
        "transformers>=5.24",  # the StaticCache layer API the KV cache drives; the version tested
        "safetensors>=0.4",
        "accelerate>=0.30",
        "gguf>=0.10",
        "triton>=3.0",
        "tqdm>=4.60",
        "numpy>=1.24",
        "scipy>=1.10",
        "rouge-score>=0.1.2",
        "rank-bm25>=0.2.2",
        "matplotlib>=3.7",
        "fastapi>=0.165",  # rgd-serve (the versions its tests ran with)
        "uvicorn>=0.55",
    ],
    extras_require={"test": ["pytest>=7", "openai>=3.63"]},  # openai: the client the rgd-serve tests drive
    entry_points={
        "console_scripts": [
            "rgd-generate=rgd_engine.cli:main",
            "rgd-eval=rgd_eval.cli:main",
            "rgd-serve=rgd_engine.serve.cli:main",
        ]
    },
    ext_modules=extension_modules(),
    cmdclass={"build_ext": build_ext_class()},
)
