"""Make `rgd_eval` importable from the eval/ folder when the package is not installed."""
import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("rgd_eval") is None:
    _root = Path(__file__).resolve().parents[2] / "eval"
    _spec = importlib.util.spec_from_file_location("rgd_eval", _root / "__init__.py",
                                                   submodule_search_locations=[str(_root)])
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules["rgd_eval"] = _mod
    _spec.loader.exec_module(_mod)


import os  # noqa: E402
import random  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def fresh_seed(request):
    """A new seed every run (fresh random inputs), reported on failure; RGD_TEST_SEED replays a case."""
    seed = int(os.environ.get("RGD_TEST_SEED") or random.SystemRandom().randrange(2**31))
    request.node.user_properties.append(("seed", seed))
    print(f"seed={seed} (rerun with RGD_TEST_SEED={seed})")
    return seed


@pytest.fixture
def gen(fresh_seed):
    return torch.Generator().manual_seed(fresh_seed)
