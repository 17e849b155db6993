"""RAW: a tensor's little-endian bytes, zstd-compressed when that is smaller (spec 5.1); the
section and zstd rules are shared with RAW_NARROW (:mod:`.raw_narrow`)."""

from __future__ import annotations

import numpy as np
import zstandard

from .. import dcnn_pb2 as pb
from .. import dtypes
from ..errors import DcnnError, FormatError, fail, stop
from ..tensors import Codes, Quantized, Raw
from .base import (
    EncodedTensor,
    Payloads,
    SectionSource,
    cast,
    expansion_ok,
    new_record,
    numel_of,
    section,
    zstd_decompressor,
)

ENUM = pb.RAW
NAME = "RAW"


def accepts(tensor: Raw | Quantized) -> bool:
    return isinstance(tensor, Raw)


def encode(name: str, tensor: Raw, chunk_size: int) -> EncodedTensor:
    stored = np.ascontiguousarray(tensor.array, dtype=dtypes.storage(tensor.dtype))
    record = new_record(name, tensor.shape, tensor.dtype, pb.RAW)
    record.nonzeros = int(np.count_nonzero(dtypes.is_nonzero(stored, tensor.dtype)))
    return EncodedTensor(record, stored_section(record, stored.tobytes(), tensor.zstd_level))


def stored_section(record: pb.Tensor, data: bytes, zstd_level: int | None) -> Payloads:
    """The ``raw`` section of ``data``, zstd-compressed (``record.compression`` set) when
    ``zstd_level`` is given and that is smaller."""
    if zstd_level is not None and data:
        packed = zstandard.ZstdCompressor(level=zstd_level, write_content_size=True).compress(data)
        if len(packed) < len(data) and expansion_ok(len(data), len(packed)):
            record.compression = pb.COMPRESSION_ZSTD
            data = packed
    return section(record.raw, data)


def check(record: pb.Tensor, dtype: str, numel: int, decoded_bytes: int) -> None:
    if record.stored_dtype:
        fail(FormatError("a RAW tensor has a stored_dtype (RAW_NARROW's field)", rule="encoding"))
    check_section(record, decoded_bytes)


def check_section(record: pb.Tensor, stored_bytes: int) -> None:
    """The rules on the ``raw`` section of ``stored_bytes`` bytes once decompressed, after no
    field of a coded encoding."""
    if (
        record.HasField("codebook")
        or record.HasField("codes")
        or record.HasField("gaps")
        or record.HasField("index_bits")
        or record.HasField("scales")
        or record.HasField("outliers")
    ):
        name = pb.Encoding.Name(record.encoding)
        fail(FormatError(f"a {name} tensor has codebook, stream or index fields", rule="encoding"))
    length = record.raw.length if record.HasField("raw") else 0
    if record.compression == pb.COMPRESSION_NONE:
        if length != stored_bytes:
            stop(
                FormatError(
                    f"RAW section of {length} bytes for {stored_bytes} bytes of data", rule="raw-size"
                )
            )
    elif record.compression == pb.COMPRESSION_ZSTD:
        if stored_bytes == 0 or length == 0:
            stop(FormatError("an empty tensor cannot be zstd-compressed", rule="raw-size"))
    else:
        stop(FormatError(f"unknown compression {record.compression}", rule="encoding"))


def entries_and_bits(record: pb.Tensor) -> tuple[int, int]:
    return numel_of(record), 8 * dtypes.itemsize(dtypes.from_enum(record.dtype))


def decode(source: SectionSource, record: pb.Tensor, out_kind: str) -> tuple[np.ndarray, int]:
    kind = dtypes.from_enum(record.dtype)
    storage = dtypes.storage(kind)
    out = stored_elements(source, record, storage)
    if kind == "bool" and np.any(out.view(np.uint8) > 1):
        fail(FormatError("a bool element is not the byte 0 or 1", rule="bool-value"))
    nonzeros = int(np.count_nonzero(dtypes.is_nonzero(out, kind))) if source.verify else 0
    return cast(out, kind, out_kind), nonzeros


def stored_elements(source: SectionSource, record: pb.Tensor, storage: np.dtype) -> np.ndarray:
    """The ``raw`` section's elements as ``storage`` values (decompressed; zeros when absent)."""
    if not record.HasField("raw"):
        return np.zeros(numel_of(record), dtype=storage)
    data = source.section(record.raw)
    if record.compression == pb.COMPRESSION_ZSTD:
        data = np.frombuffer(_unzstd(data, numel_of(record) * storage.itemsize), dtype=np.uint8).copy()
    return data.view(storage)


def nonzero_entries(source: SectionSource, record: pb.Tensor) -> None:
    return None


def codes(source: SectionSource, record: pb.Tensor) -> Codes:
    raise DcnnError("a RAW tensor has no codes", rule="usage")


def _unzstd(data: np.ndarray, expected: int) -> bytes:
    try:
        params = zstandard.get_frame_parameters(data)
        if params.content_size != expected:
            stop(
                FormatError(
                    f"zstd frame declares {params.content_size} bytes, expected {expected}", rule="zstd"
                )
            )
        frame = zstd_decompressor().decompressobj()
        out = frame.decompress(data)
    except zstandard.ZstdError as exc:
        stop(FormatError(f"zstd data does not decompress: {exc}", rule="zstd"))
    if not frame.eof or frame.unused_data:
        stop(FormatError("the section is not exactly one zstd frame", rule="zstd"))
    if len(out) != expected:
        stop(FormatError(f"zstd data gives {len(out)} bytes, expected {expected}", rule="zstd"))
    return out
