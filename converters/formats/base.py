"""What every format module provides (a :class:`Format`) and what input adapters yield."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dcformat import DcnnFile, DcnnIOError, Source, safe_open

from ..errors import ConvertError
from ..weight import Weight, from_torch

TIES = "ties"  # source attribute: {alias: [stored name, position in the source's order]}


@dataclass(frozen=True)
class ModelInput:
    """A model opened for conversion: its tensors come one at a time from ``weights()``."""

    weights: Callable[[], Iterator[Weight]]
    nbytes: int
    metadata: Mapping[str, str] = field(default_factory=dict)
    source: Source = field(default_factory=Source)
    lossless: bool = False  # already compressed: weights carry their exact encodings
    # per-tensor tasks that read each tensor only when it is compressed (converters.parallel)
    tasks: Callable[[], list[Any]] | None = None


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


def ties_of(dcnn: DcnnFile) -> dict[str, tuple[str, int]]:
    """The tied tensors a source recorded (``pytorch`` reads ties in checkpoints and modules):
    each alias name, the stored tensor it shares its data with, and its position in the
    source's tensor order. ConvertError if the record is malformed."""
    text = dcnn.source().attributes.get(TIES)
    if text is None:
        return {}
    keys = set(dcnn.keys())
    try:
        ties = {str(alias): (str(target), int(index)) for alias, (target, index) in json.loads(text).items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConvertError(f"malformed {TIES!r} source attribute: {exc}") from None
    bad = next((a for a, (t, i) in ties.items() if t not in keys or a in keys or i < 0), None)
    if bad is not None:
        raise ConvertError(f"{TIES!r} source attribute: alias {bad!r} does not name a stored tensor")
    return ties


def with_ties(names: Sequence[str], ties: Mapping[str, tuple[str, int]]) -> list[str]:
    """``names`` with the tied aliases put back at their positions."""
    out = list(names)
    for alias, (_, index) in sorted(ties.items(), key=lambda item: item[1][1]):
        out.insert(min(index, len(out)), alias)
    return out
