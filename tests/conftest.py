"""Shared test setup for the kernel tests.

Triton kernels run in the interpreter on CPU, and TRITON_INTERPRET must be set before any triton kernel
module is imported. RGD_TEST_DEVICE=cuda runs the kernel tests on the GPU (then triton compiles for real).
"""
import os

if os.environ.get("RGD_TEST_DEVICE", "cpu") != "cuda":
    os.environ["TRITON_INTERPRET"] = "1"
    try:  # triton reads the variable when first imported: import it now, before a test unsets it (test_dispatch)
        import triton  # noqa: F401
    except ImportError:
        pass

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def device():
    """Device of the kernel tests (env RGD_TEST_DEVICE, default cpu)."""
    dev = torch.device(os.environ.get("RGD_TEST_DEVICE", "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.fail("RGD_TEST_DEVICE=cuda but torch sees no CUDA device")
    return dev


@pytest.fixture(scope="session", autouse=True)
def _require_extensions():
    """RGD_REQUIRE_EXT=1 (CI) turns a missing compiled extension into an error instead of a skip."""
    if os.environ.get("RGD_REQUIRE_EXT") != "1":
        return
    from rgd_engine.kernels import cpp

    if cpp._C is None:
        raise ImportError(f"RGD_REQUIRE_EXT=1 but rgd_engine._C is not importable: {cpp._IMPORT_ERROR}")
    if os.environ.get("RGD_TEST_DEVICE") == "cuda":
        from rgd_engine.kernels import cuda

        if cuda._C_cuda is None:
            raise ImportError(f"RGD_REQUIRE_EXT=1 but rgd_engine._C_cuda is not importable: {cuda._IMPORT_ERROR}")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: big-model tests (real presets, downloaded on first use); run with "
                                       "RGD_SLOW=1 or -m slow")


def pytest_collection_modifyitems(config, items):
    """Skip `slow` tests unless RGD_SLOW=1 or the -m expression asks for them."""
    if os.environ.get("RGD_SLOW") == "1" or "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow test: set RGD_SLOW=1 or pass -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
