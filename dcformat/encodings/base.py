"""What every encoding shares: the encoded tensor, the interface an encoding module provides,
and the small helpers of its encode and decode."""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import zstandard

from .. import dcnn_pb2 as pb
from .. import dtypes
from ..codec.decode import Arena
from ..codec.huffman import Stream
from ..errors import EncodeError
from ..layout import EXPANSION_SLACK, MAX_EXPANSION, align_up
from ..tensors import Codes, Narrow, Quantized, Raw

DEFAULT_CHUNK_SIZE = 4096

Payloads = list[tuple[pb.Section, bytes | np.ndarray]]


@dataclass
class EncodedTensor:
    """One tensor ready for :meth:`dcformat.Writer.add_encoded`: its header record (section
    offsets still unset) and the bytes of each of its sections, in file order."""

    record: pb.Tensor
    payloads: Payloads

    @property
    def name(self) -> str:
        return self.record.name

    def to_bytes(self) -> tuple[bytes, list[bytes]]:
        """A pickle-safe form: the serialized record and each section's bytes, in file order
        (header records do not pickle). :meth:`from_bytes` rebuilds the tensor."""
        return self.record.SerializeToString(deterministic=True), [bytes(data) for _, data in self.payloads]

    @classmethod
    def from_bytes(cls, record: bytes, payloads: list[bytes]) -> EncodedTensor:
        """The tensor :meth:`to_bytes` gave; each payload goes to the record's next present
        section in file order, whatever the encoding."""
        parsed = pb.Tensor.FromString(record)
        sections = list(sections_of(parsed))
        if len(sections) != len(payloads):
            raise EncodeError(f"{len(payloads)} payloads for {len(sections)} sections")
        return cls(parsed, list(zip(sections, payloads, strict=True)))

    def __reduce__(self) -> tuple[object, tuple[bytes, list[bytes]]]:
        return EncodedTensor.from_bytes, self.to_bytes()

    @property
    def stored_bytes(self) -> int:
        """Bytes in a file of the default (compact, 1.2) writer: the sections, uncompressed RAW
        data rounded up to its alignment, plus the header record with its tables and codebook
        packed where that is smaller (before the header's own compression, spec 3)."""
        from . import compact  # compact uses this module's helpers

        record = pb.Tensor()
        record.CopyFrom(self.record)
        compact.compact(record)
        placed = zip(self.payloads, placed_sections(self.record), strict=True)
        return sum(align_up(len(data)) if aligned else len(data) for (_, data), (_, aligned) in placed) + (
            record.ByteSize()
        )


class SectionSource(Protocol):
    """What decoding needs of an open file (``DcnnFile`` provides it)."""

    verify: bool
    threads: int
    arena: Arena | None  # where decoded values go, if set (load_file sets one)

    def section(self, section: pb.Section) -> np.ndarray:
        """A copy of a section's bytes, its checksum verified."""
        ...

    def stream(self, stream: pb.HuffmanStream) -> Stream:
        """A Huffman stream's section and fields."""
        ...

    def symbols(self, stream: pb.HuffmanStream) -> np.ndarray:
        """A Huffman stream's decoded symbols."""
        ...


def new_in(source: SectionSource) -> Callable[[int, np.dtype], np.ndarray] | None:
    """The source's arena allocator for decoded values, or None (the decoder's own)."""
    return source.arena.new if source.arena is not None else None


class Encoding(Protocol):
    """An encoding module (see ``encodings/raw.py``): the registry maps ``ENUM`` to it."""

    ENUM: int
    NAME: str

    def accepts(self, tensor: Raw | Quantized | Narrow) -> bool:
        """Whether ``encode`` stores this writer input."""
        ...

    def encode(self, name: str, tensor: Raw | Quantized | Narrow, chunk_size: int) -> EncodedTensor: ...

    def check(self, record: pb.Tensor, dtype: str, numel: int, decoded_bytes: int) -> None:
        """The encoding's header rules (FormatError), after the rules every tensor shares."""
        ...

    def entries_and_bits(self, record: pb.Tensor) -> tuple[int, int]:
        """Stored entries and bits per entry, for ``TensorInfo``."""
        ...

    def decode(self, source: SectionSource, record: pb.Tensor, out_kind: str) -> tuple[np.ndarray, int]:
        """Flat values in the stored form of ``out_kind``, and the nonzeros counted (if verify)."""
        ...

    def nonzero_entries(
        self, source: SectionSource, record: pb.Tensor
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Flat positions and stored-form values of the nonzero elements; None: the reader
        finds them in the dense tensor."""
        ...

    def codes(self, source: SectionSource, record: pb.Tensor) -> Codes:
        """Codebook, codes and positions, without decoding values (DcnnError if none)."""
        ...


def sections_of(tensor: pb.Tensor) -> Iterator[pb.Section]:
    """The tensor's present sections in their required file order (spec section 4)."""
    if tensor.HasField("raw"):
        yield tensor.raw
    for stream in ("codes", "gaps"):
        if tensor.HasField(stream) and getattr(tensor, stream).HasField("data"):
            yield getattr(tensor, stream).data
    if tensor.HasField("outliers"):
        for name in ("positions", "values"):
            if tensor.outliers.HasField(name):
                yield getattr(tensor.outliers, name)


def placed_sections(tensor: pb.Tensor) -> Iterator[tuple[pb.Section, bool]]:
    """The tensor's sections in file order, each with whether it starts 64-aligned in a 1.2
    file: only uncompressed RAW data is (for mmap)."""
    aligned = tensor.encoding == pb.RAW and tensor.compression == pb.COMPRESSION_NONE
    for section in sections_of(tensor):
        yield section, aligned


def new_record(name: str, shape: tuple[int, ...], dtype: str, encoding: int) -> pb.Tensor:
    return pb.Tensor(name=name, shape=shape, dtype=dtypes.to_enum(dtype), encoding=encoding)


def section(record_field: pb.Section, data: bytes | np.ndarray) -> Payloads:
    """The payload of one section (none when empty); sets its length and checksum."""
    if not len(data):
        return []
    record_field.length = len(data)
    record_field.crc32 = zlib.crc32(data)
    return [(record_field, data)]


def expansion_ok(decoded_bytes: int, stored_bytes: int) -> bool:
    return decoded_bytes <= MAX_EXPANSION * stored_bytes + EXPANSION_SLACK


def numel_of(record: pb.Tensor) -> int:
    n = 1
    for d in record.shape:
        n *= d
    return n


def cast(stored: np.ndarray, kind: str, out_kind: str) -> np.ndarray:
    """Stored-form values of ``kind`` converted to the stored form of ``out_kind``."""
    if out_kind == kind:
        return stored
    wide = dtypes.bfloat16_to_float32(stored) if kind == "bfloat16" else stored
    return dtypes.convert_floats(wide, out_kind)


_local = threading.local()


def zstd_decompressor() -> zstandard.ZstdDecompressor:
    """This thread's zstd decompressor: making one takes longer than decompressing a small
    tensor, and one must not be used by two threads at once."""
    found = getattr(_local, "zstd", None)
    if found is None:
        found = _local.zstd = zstandard.ZstdDecompressor()
    return found
