"""What every input adapter yields and every output adapter shares."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from dcformat import DcnnIOError, Source

Kind = Literal["conv", "fc"]


@dataclass(frozen=True)
class Weight:
    """One tensor of a model: stored-form array (bfloat16 as uint16 bits) and dtype name.

    ``kind`` is "conv" or "fc" when the model itself says how the tensor is used (a module
    type, an ONNX operator); without it the shape decides.
    """

    name: str
    array: np.ndarray
    dtype: str
    kind: Kind | None = None


@dataclass(frozen=True)
class ModelInput:
    """A model opened for conversion: its tensors come one at a time from ``weights()``."""

    weights: Callable[[], Iterator[Weight]]
    nbytes: int
    metadata: Mapping[str, str] = field(default_factory=dict)
    source: Source = field(default_factory=Source)


def check_input(path: Path) -> None:
    """Raise DcnnIOError unless ``path`` is a readable file."""
    if not path.exists():
        raise DcnnIOError("no such file", path=str(path))
    if not path.is_file():
        raise DcnnIOError("not a regular file", path=str(path))


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it when the block succeeds.

    On any error the temporary file is removed and ``path`` is left as it was.
    """
    directory = path.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=directory)
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
            raise DcnnIOError(f"cannot write: {exc.strerror or exc}", path=str(path)) from None
        raise
