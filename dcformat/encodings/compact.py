"""Compact header records (format 1.2, spec 5.8 and 7.6): the writer packs code-length tables
and codebooks when that is smaller (and stores a float32 codebook as float16 when that is exact);
the reader expands them back, so every other rule and decoder sees the 1.0 fields."""

from __future__ import annotations

import numpy as np

from .. import dcnn_pb2 as pb
from .. import dtypes
from ..codec import packed
from ..errors import FormatError, LimitError, VersionError, fail
from ..layout import MAJOR, MAX_HEADER_BYTES

SINCE_MINOR = 2
# The lengths all packed tables of a file may expand to: what plain tables could take.
MAX_EXPANDED = MAX_HEADER_BYTES


def compact(record: pb.Tensor) -> bool:
    """Pack the record's tables and codebook where that is smaller; whether it now needs 1.2."""
    needs = False
    for stream in _streams(record):
        plain = stream.code_lengths
        if plain:
            small = packed.pack_table(np.frombuffer(plain, dtype=np.uint8))
            if len(small) < len(plain):
                stream.code_lengths, stream.code_lengths_packed, needs = b"", small, True
    if record.HasField("codebook") and record.codebook.values:
        book = record.codebook
        values = np.frombuffer(book.values, dtype=dtypes.storage(dtypes.from_enum(book.dtype)))
        forms = [(values, False)]
        if values.dtype == np.float32:
            with np.errstate(over="ignore"):  # values past float16's range do not convert exactly
                half = values.astype(np.float16)
            if np.all(np.isfinite(values) | np.isinf(values)) and np.array_equal(
                half.astype(np.float32).view(np.uint32), values.view(np.uint32)
            ):
                forms.append((half, False))
        forms += [(v, True) for v, _ in list(forms)]
        best, is_packed = min(forms, key=lambda f: _size(*f))
        book.dtype = dtypes.to_enum(dtypes.name_of(best.dtype))
        if is_packed:
            book.values, book.values_packed, needs = b"", packed.pack_codebook(best), True
        else:
            book.values = best.astype(best.dtype.newbyteorder("<")).tobytes()
    return needs


def _size(values: np.ndarray, is_packed: bool) -> int:
    return len(packed.pack_codebook(values)) if is_packed else values.nbytes


def expand(record: pb.Tensor, minor: int) -> int:
    """Replace the record's packed fields by the plain ones they hold (spec 11.1, step 3); the
    number of table lengths expanded."""
    book = record.codebook if record.HasField("codebook") else None
    tables = [s for s in _streams(record) if s.code_lengths_packed]
    if not tables and not (book is not None and book.values_packed):
        return 0
    if minor < SINCE_MINOR:
        fail(
            VersionError(
                f"packed tables are a format {MAJOR}.{SINCE_MINOR} feature in a file that declares "
                f"{MAJOR}.{minor}",
                rule="version",
            )
        )
    if book is not None and book.values_packed:
        kind = dtypes.from_enum(book.dtype)
        if kind not in dtypes.CODEBOOK_NAMES:
            fail(FormatError("codebook values must be float32 or float16", rule="codebook"))
        if book.values:
            fail(FormatError("a codebook has both values and values_packed", rule="codebook"))
        book.values = packed.unpack_codebook(book.values_packed, dtypes.itemsize(kind), "codebook")
        book.values_packed = b""
    expanded = 0
    for stream in tables:
        if stream.code_lengths:
            fail(FormatError("a stream has both code_lengths and code_lengths_packed", rule="huffman-table"))
        stream.code_lengths = packed.unpack_table(stream.code_lengths_packed, "huffman-table").tobytes()
        stream.code_lengths_packed = b""
        expanded += len(stream.code_lengths)
    return expanded


def check_expanded(total: int) -> None:
    if total > MAX_EXPANDED:
        fail(LimitError(f"packed tables expand to over {MAX_EXPANDED} lengths", rule="huffman-table"))


def _streams(record: pb.Tensor) -> list[pb.HuffmanStream]:
    return [getattr(record, name) for name in ("codes", "gaps") if record.HasField(name)]
