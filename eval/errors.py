"""User-facing errors of rgd-eval: bad arguments, data or run folders (each message names the problem).

They are `rgd_engine.RGDError`s, so `rgd-eval` prints them on one line and exits 2 (traceback with --debug).
"""
from rgd_engine.errors import RGDError


class RGDEvalError(RGDError, ValueError):
    """Base of rgd-eval's user-facing errors."""


class RunArgumentError(RGDEvalError):
    """An `rgd-eval run` argument outside its accepted range (names the argument)."""


class DataError(RGDEvalError):
    """Data that cannot make a study (no test split, no usable user, ...); names the folder and the split."""
