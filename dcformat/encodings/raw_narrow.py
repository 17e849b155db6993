"""RAW_NARROW (format 1.3, spec 5.9): float32 or float64 elements stored as float16 or
bfloat16 (the RAW section rules, at the stored type's size) and widened exactly on reading."""

from __future__ import annotations

import numpy as np

from .. import dcnn_pb2 as pb
from .. import dtypes
from ..errors import DcnnError, FormatError, stop
from ..tensors import Codes, Narrow, Quantized, Raw
from . import raw
from .base import EncodedTensor, SectionSource, cast, new_record, numel_of

ENUM = pb.RAW_NARROW
NAME = "RAW_NARROW"
WIDE = ("float32", "float64")  # the dtypes a RAW_NARROW tensor decodes to
NARROW = ("float16", "bfloat16")  # the types its elements are stored in


def accepts(tensor: Raw | Quantized | Narrow) -> bool:
    return isinstance(tensor, Narrow)


def encode(name: str, tensor: Narrow, chunk_size: int) -> EncodedTensor:
    record = new_record(name, tensor.shape, tensor.dtype, pb.RAW_NARROW)
    record.stored_dtype = dtypes.to_enum(tensor.stored)
    stored = np.ascontiguousarray(tensor.narrowed(), dtype=dtypes.storage(tensor.stored))
    record.nonzeros = int(np.count_nonzero(dtypes.is_nonzero(stored, tensor.stored)))
    return EncodedTensor(record, raw.stored_section(record, stored.tobytes(), tensor.zstd_level))


def check(record: pb.Tensor, dtype: str, numel: int, decoded_bytes: int) -> None:
    if dtype not in WIDE:
        stop(FormatError(f"RAW_NARROW tensors decode to float32 or float64, not {dtype}", rule="dtype"))
    kind = dtypes.from_enum(record.stored_dtype)
    if kind not in NARROW:
        stop(
            FormatError(
                f"RAW_NARROW stores float16 or bfloat16, not dtype {record.stored_dtype}", rule="dtype"
            )
        )
    raw.check_section(record, numel * dtypes.itemsize(kind))


def entries_and_bits(record: pb.Tensor) -> tuple[int, int]:
    return numel_of(record), 16


def decode(source: SectionSource, record: pb.Tensor, out_kind: str) -> tuple[np.ndarray, int]:
    kind = dtypes.from_enum(record.stored_dtype)  # float16 or bfloat16: checked with the header
    out = raw.stored_elements(source, record, dtypes.storage(kind))
    nonzeros = int(np.count_nonzero(dtypes.is_nonzero(out, kind))) if source.verify else 0
    if out_kind == kind:
        return out, nonzeros
    widened = dtypes.bfloat16_to_float32(out) if kind == "bfloat16" else out.astype(np.float32)
    return cast(widened, "float32", out_kind), nonzeros


def nonzero_entries(source: SectionSource, record: pb.Tensor) -> None:
    return None


def codes(source: SectionSource, record: pb.Tensor) -> Codes:
    raise DcnnError("a RAW_NARROW tensor has no codes", rule="usage")
