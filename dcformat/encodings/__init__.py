"""The tensor encodings, one module each, and the registry the reader, header checks and
writer dispatch through. A new encoding is a module here (see ``base.Encoding``), an entry
in ``ENCODINGS``, its enum value in spec/dcnn.proto, spec text and vectors."""

from __future__ import annotations

import numpy as np

from .. import dcnn_pb2 as pb
from ..errors import EncodeError, FormatError, stop
from ..layout import MAX_CHUNK_SIZE, MAX_NAME_BYTES
from ..tensors import Narrow, Quantized, Raw
from . import dense_codes, extended, raw, raw_narrow, sparse_codes
from .base import DEFAULT_CHUNK_SIZE, EncodedTensor, Encoding

ENCODINGS: dict[int, Encoding] = {
    e.ENUM: e for e in (raw, dense_codes, sparse_codes, extended.DENSE, extended.SPARSE, raw_narrow)
}
# The minor version that introduced each encoding (spec section 10); a file using one declares
# at least that minor version.
SINCE_MINOR: dict[int, int] = {pb.DENSE_CODES_EXT: 1, pb.SPARSE_CODES_EXT: 1, pb.RAW_NARROW: 3}


def of(record: pb.Tensor) -> Encoding:
    """The encoding of a header record (FormatError for an unknown one)."""
    try:
        return ENCODINGS[record.encoding]
    except KeyError:
        stop(FormatError(f"unknown encoding {record.encoding}", rule="encoding"))


def encode(
    name: str, tensor: Raw | Quantized | Narrow | np.ndarray, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> EncodedTensor:
    """Encode a tensor once, for measuring (``.stored_bytes``) and for
    :meth:`dcformat.Writer.add_encoded`; raises EncodeError for what the format cannot hold.
    Numpy arrays are stored exactly (RAW)."""
    if not isinstance(name, str) or not name or len(name.encode()) > MAX_NAME_BYTES:
        raise EncodeError(f"tensor names must be non-empty strings of at most {MAX_NAME_BYTES} bytes")
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise EncodeError(f"chunk_size must be 1..{MAX_CHUNK_SIZE}")
    if isinstance(tensor, np.ndarray):
        tensor = Raw(tensor)
    for encoding in ENCODINGS.values():
        if isinstance(tensor, Raw | Quantized | Narrow) and encoding.accepts(tensor):
            return encoding.encode(name, tensor, chunk_size)
    raise EncodeError(
        f"tensor {name!r}: expected Raw, Quantized, Narrow or numpy array, got {type(tensor).__name__}"
    )


def stored_size(tensor: Raw | Quantized | Narrow | np.ndarray, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Bytes this tensor costs in a .dcnn file (its sections, aligned, and its header record)."""
    return encode("t", tensor, chunk_size).stored_bytes


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "ENCODINGS",
    "SINCE_MINOR",
    "EncodedTensor",
    "Encoding",
    "encode",
    "of",
    "stored_size",
]
