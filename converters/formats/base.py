"""What every format module provides (a :class:`Format`) and what input adapters yield."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dcformat import DcnnFile, DcnnIOError, Source, safe_open

from ..weight import Weight, from_torch


@dataclass(frozen=True)
class ModelInput:
    """A model opened for conversion: its tensors come one at a time from ``weights()``."""

    weights: Callable[[], Iterator[Weight]]
    nbytes: int
    metadata: Mapping[str, str] = field(default_factory=dict)
    source: Source = field(default_factory=Source)
    lossless: bool = False  # already compressed: weights carry their exact encodings


ReadModel = Callable[..., ModelInput]  # read(path, **options): options such as prototxt=
WriteModel = Callable[[Path, Path, Mapping[str, Any]], None]  # write(dcnn_path, destination, options)


@dataclass(frozen=True)
class Format:
    """A model format: the file suffixes it owns, and how to read it, write it, or both.

    Each module of ``converters.formats`` defines one as ``FORMAT``; the registry finds it.
    """

    name: str
    suffixes: tuple[str, ...]
    read: ReadModel | None = None
    write: WriteModel | None = None


@contextlib.contextmanager
def stored_tensors(path: Path) -> Iterator[tuple[DcnnFile, Callable[[str], np.ndarray]]]:
    """An open .dcnn file and a function giving each tensor's stored-form array (bfloat16
    as its bits, exactly, which takes torch)."""
    with safe_open(path) as dcnn:
        bfloat16 = any(dcnn.info(name).dtype == "bfloat16" for name in dcnn.keys())
    if not bfloat16:
        with safe_open(path) as dcnn:
            yield dcnn, dcnn.get_tensor
        return
    with safe_open(path, framework="torch") as dcnn:
        yield dcnn, lambda name: from_torch(name, dcnn.get_tensor(name)).array


def check_input(path: Path) -> None:
    """Raise DcnnIOError unless ``path`` is a readable file."""
    if not path.exists():
        raise DcnnIOError("no such file", path=str(path))
    if not path.is_file():
        raise DcnnIOError("not a regular file", path=str(path))
