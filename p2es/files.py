"""The one atomic-file-write helper: a reader sees the old file or the new one, never half.

The data goes to a temporary file in the target's directory (same file system), is flushed
(and, with ``durable=True``, fsync'ed together with the directory entry), then ``os.replace``
puts it in place.  On any error the temporary file is removed and the target is untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text"]


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[BinaryIO], object], *, durable: bool = False
) -> Path:
    """Create or replace ``path`` with what ``write(f)`` writes into a binary file object."""
    p = Path(os.fspath(path))
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        with contextlib.suppress(OSError):
            dfd = os.open(p.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    return p


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, durable: bool = False) -> Path:
    return atomic_write(path, lambda f: f.write(data), durable=durable)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, durable: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), durable=durable)
