"""Atomic JSON / text / torch writes for run folders (rgd_engine.atomic underneath)."""
from __future__ import annotations

import json
import os
from typing import Any

import torch

from rgd_engine.atomic import atomic_write


def write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), "w")


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    # allow_nan=False: NaN/inf are not JSON; callers must encode them (e.g. None) explicitly.
    text = json.dumps(obj, indent=indent, allow_nan=False, ensure_ascii=False) + "\n"
    write_text(path, text)


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def torch_save(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, lambda f: torch.save(obj, f), "wb")
