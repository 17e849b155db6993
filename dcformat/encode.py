"""Turn one Raw or Quantized tensor into its header record and section payloads."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import zstandard

from . import dcnn_pb2 as pb
from . import dtypes, gaps, huffman
from .errors import EncodeError
from .layout import EXPANSION_SLACK, MAX_CHUNK_SIZE, MAX_EXPANSION, MAX_NAME_BYTES, align_up
from .tensors import Quantized, Raw

DEFAULT_CHUNK_SIZE = 4096


@dataclass
class EncodedTensor:
    """A header record whose sections still need offsets, and the bytes of each section."""

    record: pb.Tensor
    payloads: list[tuple[pb.Section, bytes]]

    @property
    def stored_bytes(self) -> int:
        """Bytes in the file: sections rounded up to the alignment, plus the header record."""
        return sum(align_up(len(data)) for _, data in self.payloads) + self.record.ByteSize()


def encode_tensor(
    name: str, tensor: Raw | Quantized | np.ndarray, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> EncodedTensor:
    """Encode a tensor for the writer; raises EncodeError for what the format cannot hold."""
    if not isinstance(name, str) or not name or len(name.encode()) > MAX_NAME_BYTES:
        raise EncodeError(f"tensor names must be non-empty strings of at most {MAX_NAME_BYTES} bytes")
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise EncodeError(f"chunk_size must be 1..{MAX_CHUNK_SIZE}")
    if isinstance(tensor, np.ndarray):
        tensor = Raw(tensor)
    if isinstance(tensor, Raw):
        return _encode_raw(name, tensor)
    if isinstance(tensor, Quantized):
        return _encode_quantized(name, tensor, chunk_size)
    raise EncodeError(f"tensor {name!r}: expected Raw, Quantized or numpy array, got {type(tensor).__name__}")


def stored_size(tensor: Raw | Quantized | np.ndarray, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Bytes this tensor costs in a .dcnn file (its sections, aligned, and its header record)."""
    return encode_tensor("t", tensor, chunk_size).stored_bytes


def _record(name: str, shape: tuple[int, ...], dtype: str, encoding: int) -> pb.Tensor:
    return pb.Tensor(name=name, shape=shape, dtype=dtypes.to_enum(dtype), encoding=encoding)


def _section(record_field: pb.Section, data: bytes) -> list[tuple[pb.Section, bytes]]:
    if not data:
        return []
    record_field.length = len(data)
    record_field.crc32 = zlib.crc32(data)
    return [(record_field, data)]


def _encode_raw(name: str, tensor: Raw) -> EncodedTensor:
    stored = np.ascontiguousarray(tensor.array, dtype=dtypes.storage(tensor.dtype))
    data = stored.tobytes()
    record = _record(name, tensor.shape, tensor.dtype, pb.RAW)
    record.nonzeros = int(np.count_nonzero(dtypes.is_nonzero(stored, tensor.dtype)))
    if tensor.zstd_level is not None and data:
        packed = zstandard.ZstdCompressor(level=tensor.zstd_level, write_content_size=True).compress(data)
        if len(packed) < len(data) and _expansion_ok(len(data), len(packed)):
            record.compression = pb.COMPRESSION_ZSTD
            data = packed
    return EncodedTensor(record, _section(record.raw, data))


def _expansion_ok(decoded_bytes: int, stored_bytes: int) -> bool:
    return decoded_bytes <= MAX_EXPANSION * stored_bytes + EXPANSION_SLACK


def _encode_quantized(name: str, tensor: Quantized, chunk_size: int) -> EncodedTensor:
    alphabet = tensor.codebook.size
    encoding = pb.SPARSE_CODES if tensor.sparse else pb.DENSE_CODES
    record = _record(name, tensor.shape, tensor.dtype, encoding)
    record.codebook.dtype = dtypes.to_enum(dtypes.name_of(tensor.codebook.dtype))
    record.codebook.values = tensor.codebook.astype(tensor.codebook.dtype.newbyteorder("<")).tobytes()
    decoded = dtypes.convert_floats(tensor.codebook, tensor.dtype)
    nonzero_code = dtypes.is_nonzero(decoded, tensor.dtype)
    numel = int(np.prod(tensor.shape, dtype=object))
    decoded_bytes = numel * dtypes.itemsize(tensor.dtype)
    freqs = huffman.frequencies(tensor.codes, alphabet)
    record.nonzeros = int(freqs[nonzero_code].sum())
    if not tensor.sparse:
        payloads = _stream(record.codes, tensor.codes, freqs, chunk_size)
        if not _expansion_ok(decoded_bytes, len(payloads[0][1]) if payloads else 0):
            raise EncodeError(f"tensor {name!r} would decode to over {MAX_EXPANSION}x its stored size")
        return EncodedTensor(record, payloads)
    if tensor.index_bits is None:
        candidates = range(gaps.best_index_bits(tensor.positions, tensor.codes, alphabet), 0, -1)
    else:
        candidates = [tensor.index_bits]
    for bits in candidates:  # fewer index bits add fillers, bounding the expansion
        for tail_numel in (None, numel):  # then trailing fillers over a zero tail
            payloads = _sparse_streams(record, tensor, bits, chunk_size, tail_numel)
            if _expansion_ok(decoded_bytes, sum(len(data) for _, data in payloads)):
                return EncodedTensor(record, payloads)
    raise EncodeError(
        f"tensor {name!r} is too sparse for index_bits {tensor.index_bits}: it would decode "
        f"to over {MAX_EXPANSION}x its stored size; let the writer pick index_bits"
    )


def _sparse_streams(
    record: pb.Tensor, tensor: Quantized, bits: int, chunk_size: int, tail_numel: int | None
) -> list[tuple[pb.Section, bytes]]:
    entry_gaps, entry_codes = gaps.with_fillers(tensor.positions, tensor.codes, bits, tail_numel)
    record.index_bits = bits
    code_freqs = huffman.frequencies(entry_codes, tensor.codebook.size)
    gap_freqs = huffman.frequencies(entry_gaps, 1 << bits)
    return _stream(record.codes, entry_codes, code_freqs, chunk_size) + _stream(
        record.gaps, entry_gaps, gap_freqs, chunk_size
    )


def _stream(
    out: pb.HuffmanStream, symbols: np.ndarray, freqs: np.ndarray, chunk_size: int
) -> list[tuple[pb.Section, bytes]]:
    out.Clear()
    lengths = huffman.code_lengths(freqs)
    coded = huffman.encode(symbols, lengths, chunk_size, freqs)
    out.count = symbols.size
    out.code_lengths = lengths.tobytes()
    out.chunk_size = chunk_size
    out.chunk_offsets.extend(coded.chunk_offsets.tolist())
    out.bit_length = coded.bit_length
    return _section(out.data, coded.data)
