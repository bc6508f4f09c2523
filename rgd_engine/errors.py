"""Exceptions with messages that name the offending file, user, id or shape, and the CLIs' error reporting.

One error type per layer, all under `RGDError`:
- `ModelLoadError`, `TokenizerMismatchError`: loading models (path, dtype, device, tokenizers).
- `HeadBankError` (`UnknownUserError`): reward-head banks (user, tensor, dtype, shape, file).
- `ConfigError`: a malformed configuration dict / JSON (unknown fields, not JSON).
- `GenerationInputError` (`PromptTooLongError`): what `Engine.generate` is asked to do (config values, weights,
  prompts). Both are also `ValueError`s, so code that caught the plain ValueError they replaced still works.

`run_cli` turns these into one line on stderr and exit code 2 for every command-line tool.
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import Callable

EXIT_USAGE = 2  # bad input: RGDError or ValueError (argparse uses 2 for its errors too)
EXIT_IO = 1  # the environment failed: OSError (permissions, disk full, ...)
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class RGDError(Exception):
    """Base class of rgd-engine errors meant for users (bad input, missing model, ...)."""


class ModelLoadError(RGDError):
    pass


class TokenizerMismatchError(RGDError):
    pass


class HeadBankError(RGDError):
    pass


class UnknownUserError(HeadBankError, KeyError):
    def __str__(self):  # KeyError would quote the message
        return self.args[0] if self.args else ""


class ConfigError(RGDError, ValueError):
    """A configuration (EngineConfig / GenerationConfig dict or JSON) is malformed: unknown fields, bad JSON."""


class GenerationInputError(RGDError, ValueError):
    """A generation argument (config value, per-row weight, prompt text) is outside what the engine accepts."""


class PromptTooLongError(GenerationInputError):
    """Prompt tokens + max_new_tokens exceed the model's maximum positions (raised before any work)."""


def debug_requested(debug: bool = False) -> bool:
    """True with --debug or with the environment variable RGD_DEBUG set to anything but '' or '0'."""
    return bool(debug) or os.environ.get("RGD_DEBUG", "") not in ("", "0")


def one_line(err: BaseException) -> str:
    """The error's message on one line (some library messages span several); the type name if it has none."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__


def run_cli(prog: str, body: Callable[[], int | None], debug: bool = False) -> int:
    """Run a command-line tool's body and return its exit code.

    RGDError or ValueError (bad input) -> `prog: error: <message>` on one line of stderr, exit 2.
    OSError (permissions, disk full) -> the same line, exit 1. KeyboardInterrupt -> `prog: interrupted`, exit 130.
    With debug=True (--debug) or RGD_DEBUG=1 the traceback is printed first; the exit code stays the same.
    Any other exception is a bug: it propagates with its traceback.
    """
    try:
        code = body()
    except KeyboardInterrupt:
        _report(prog, "interrupted", debug)
        return EXIT_INTERRUPTED
    except (RGDError, ValueError) as e:
        _report(prog, f"error: {one_line(e)}", debug)
        return EXIT_USAGE
    except OSError as e:
        _report(prog, f"error: {one_line(e)}", debug)
        return EXIT_IO
    return 0 if code is None else int(code)


def _report(prog: str, line: str, debug: bool) -> None:
    if debug_requested(debug):
        traceback.print_exc(file=sys.stderr)
    print(f"{prog}: {line}", file=sys.stderr)
