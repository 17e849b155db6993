"""The one atomic file replacement: write beside the target, fsync, rename, fsync the folder.

A crash at any moment leaves the target as it was (the old file or none); what is left
behind is a hidden temporary file named ``.<name>.<random><suffix>`` beside it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import DcnnIOError


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str], suffix: str = ".partial") -> Iterator[Path]:
    """A temporary path beside ``path`` that atomically replaces it when the block succeeds.

    The block writes the temporary file (and closes it); on success it is fsynced, renamed
    over ``path`` and the folder fsynced. On any error the temporary file is removed and
    ``path`` is left as it was; OSErrors become DcnnIOError.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=directory)
        os.close(fd)
    except OSError as exc:
        raise DcnnIOError(f"cannot write here: {exc.strerror or exc}", path=str(path)) from None
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, DcnnIOError):
            raise DcnnIOError(f"cannot write: {exc.strerror or exc}", path=str(path)) from exc
        raise
    fsync_directory(directory)


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename in ``directory`` durable (where the platform allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
