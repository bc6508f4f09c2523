"""Atomic file writes: write a temp file in the target's folder, fsync, then rename it over the target.

Readers never see a half-written file, even after a crash; on error the temp file is removed and the old target
is left as it was.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path` for a writer that wants a file name; on success it replaces `path`.

    An OSError of the file system (read-only folder, permission, disk full) is re-raised naming `path`, not the
    temp file the user never asked for (also when the writer's OSError names the temp file); other errors of the
    writer pass through unchanged."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _naming(e, path) from e
    os.close(fd)
    try:
        try:
            yield Path(tmp)
        except OSError as e:
            if isinstance(e.filename, str) and os.path.abspath(e.filename) == os.path.abspath(tmp):
                raise _naming(e, path) from e
            raise
        try:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
            os.replace(tmp, path)
        except OSError as e:
            raise _naming(e, path) from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _naming(err: OSError, path: Path) -> OSError:
    """The same kind of OSError (PermissionError, ...) with `path` as its file name."""
    return type(err)(err.errno, err.strerror or str(err), str(path))


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "w") -> None:
    """Call write(f) on a file object opened with `mode` ('w' or 'wb') and commit it atomically to `path`."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
            write(f)
