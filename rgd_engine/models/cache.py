"""Where downloaded wheels, assembled GGUFs and converted model directories live: $RGD_CACHE."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$RGD_CACHE, default ~/.cache/rgd_engine."""
    return Path(os.environ.get("RGD_CACHE", Path.home() / ".cache" / "rgd_engine"))
