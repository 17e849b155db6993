"""Parse the preamble and header and check every rule that needs no section data.

All checks here are cheap (no decoding), so opening a file runs them all: a hostile
header is rejected before anything is allocated from its declared sizes.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from google.protobuf.message import DecodeError

from . import dcnn_pb2 as pb
from . import dtypes, huffman
from .errors import ChecksumError, FormatError, LimitError, VersionError
from .layout import (
    EXPANSION_SLACK,
    MAGIC,
    MAJOR,
    MAX_ALPHABET,
    MAX_CHUNK_SIZE,
    MAX_CODE_LENGTH,
    MAX_ELEMENTS,
    MAX_EXPANSION,
    MAX_HEADER_BYTES,
    MAX_NAME_BYTES,
    MAX_RANK,
    PREAMBLE,
    PREAMBLE_SIZE,
    align_up,
)

ENCODING_NAMES = {pb.RAW: "RAW", pb.DENSE_CODES: "DENSE_CODES", pb.SPARSE_CODES: "SPARSE_CODES"}


@dataclass(frozen=True)
class Preamble:
    major: int
    minor: int
    header_length: int
    data_start: int


def read_preamble(head: bytes, file_size: int) -> Preamble:
    """Check the fixed 24 bytes at the start of a file."""
    if len(head) < PREAMBLE_SIZE:
        if MAGIC.startswith(head[: len(MAGIC)]):
            raise FormatError(
                f"file is {file_size} bytes, too short for a .dcnn preamble",
                rule="truncated",
                offset=file_size,
            )
        raise FormatError("not a .dcnn file (bad magic bytes)", rule="magic", offset=0)
    magic, major, minor, header_length, _, preamble_crc = PREAMBLE.unpack(head[:PREAMBLE_SIZE])
    if magic != MAGIC:
        if magic[1:4] == MAGIC[1:4]:
            raise FormatError(
                "magic bytes damaged: the file went through a text-mode or 7-bit transfer",
                rule="magic",
                offset=0,
            )
        raise FormatError("not a .dcnn file (bad magic bytes)", rule="magic", offset=0)
    if zlib.crc32(head[: PREAMBLE_SIZE - 4]) != preamble_crc:
        raise ChecksumError("preamble checksum mismatch", rule="preamble-crc", offset=8)
    if major != MAJOR:
        raise VersionError(
            f"format major version {major} is not supported (this reader implements {MAJOR})",
            rule="version",
            offset=8,
        )
    if header_length > MAX_HEADER_BYTES:
        raise LimitError(
            f"header of {header_length} bytes exceeds the limit {MAX_HEADER_BYTES}",
            rule="header-size",
            offset=12,
        )
    data_start = align_up(PREAMBLE_SIZE + header_length)
    if data_start > file_size:
        raise FormatError(
            f"file of {file_size} bytes ends inside its header", rule="truncated", offset=file_size
        )
    return Preamble(major, minor, header_length, data_start)


def parse_header(head: bytes, preamble: Preamble) -> pb.Header:
    """Check the header checksum and parse it (unknown fields are kept and ignored)."""
    raw = head[PREAMBLE_SIZE : PREAMBLE_SIZE + preamble.header_length]
    expected_crc = PREAMBLE.unpack(head[:PREAMBLE_SIZE])[4]
    if zlib.crc32(raw) != expected_crc:
        raise ChecksumError("header checksum mismatch", rule="header-crc", offset=PREAMBLE_SIZE)
    header = pb.Header()
    try:
        header.ParseFromString(raw)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise FormatError(
            f"header does not parse: {exc}", rule="header-parse", offset=PREAMBLE_SIZE
        ) from None
    return header


def numel_of(tensor: pb.Tensor) -> int:
    n = 1
    for d in tensor.shape:
        n *= d
    return n


def sections_of(tensor: pb.Tensor) -> Iterator[pb.Section]:
    """The tensor's sections in their required file order."""
    if tensor.HasField("raw"):
        yield tensor.raw
    for stream in ("codes", "gaps"):
        if tensor.HasField(stream) and getattr(tensor, stream).HasField("data"):
            yield getattr(tensor, stream).data


def check_tensor(tensor: pb.Tensor) -> None:
    """Every rule on one tensor record that needs no section data."""
    if not tensor.name or len(tensor.name.encode()) > MAX_NAME_BYTES:
        raise FormatError(f"tensor names must be 1 to {MAX_NAME_BYTES} bytes", rule="tensor-name")
    if len(tensor.shape) > MAX_RANK:
        raise LimitError(f"rank {len(tensor.shape)} exceeds {MAX_RANK}", rule="shape")
    numel = 1
    for d in tensor.shape:
        numel *= d
        if numel > MAX_ELEMENTS:
            raise LimitError(f"shape {list(tensor.shape)} exceeds {MAX_ELEMENTS} elements", rule="shape")
    dtype = dtypes.from_enum(tensor.dtype)
    if dtype is None:
        raise FormatError(f"unknown dtype {tensor.dtype}", rule="dtype")
    if tensor.nonzeros > numel:
        raise FormatError(f"{tensor.nonzeros} nonzeros in {numel} elements", rule="nonzeros")
    for section in sections_of(tensor):
        if section.length == 0:
            raise FormatError("a present section must not be empty", rule="section-layout")
    decoded_bytes = numel * dtypes.itemsize(dtype)
    stored = sum(s.length for s in sections_of(tensor))
    if decoded_bytes > MAX_EXPANSION * stored + EXPANSION_SLACK:
        raise LimitError(
            f"{decoded_bytes} decoded bytes from {stored} stored bytes exceeds the "
            f"expansion limit {MAX_EXPANSION}",
            rule="expansion",
        )
    encoding = tensor.encoding
    if encoding == pb.RAW:
        _check_raw(tensor, decoded_bytes)
    elif encoding in (pb.DENSE_CODES, pb.SPARSE_CODES):
        _check_codes(tensor, dtype, numel)
    else:
        raise FormatError(f"unknown encoding {encoding}", rule="encoding")


def _check_raw(tensor: pb.Tensor, decoded_bytes: int) -> None:
    if (
        tensor.HasField("codebook")
        or tensor.HasField("codes")
        or tensor.HasField("gaps")
        or tensor.index_bits
    ):
        raise FormatError("a RAW tensor has codebook, stream or index fields", rule="encoding")
    length = tensor.raw.length if tensor.HasField("raw") else 0
    if tensor.compression == pb.COMPRESSION_NONE:
        if length != decoded_bytes:
            raise FormatError(
                f"RAW section of {length} bytes for {decoded_bytes} bytes of data", rule="raw-size"
            )
    elif tensor.compression == pb.COMPRESSION_ZSTD:
        if decoded_bytes == 0 or length == 0:
            raise FormatError("an empty tensor cannot be zstd-compressed", rule="raw-size")
    else:
        raise FormatError(f"unknown compression {tensor.compression}", rule="encoding")


def _check_codes(tensor: pb.Tensor, dtype: str, numel: int) -> None:
    if dtype not in dtypes.FLOAT_NAMES:
        raise FormatError(f"coded tensors decode to floats, not {dtype}", rule="dtype")
    if tensor.HasField("raw") or tensor.compression:
        raise FormatError("a coded tensor has RAW fields", rule="encoding")
    if not tensor.HasField("codebook") or not tensor.HasField("codes"):
        raise FormatError("a coded tensor needs a codebook and a codes stream", rule="encoding")
    book_dtype = dtypes.from_enum(tensor.codebook.dtype)
    if book_dtype not in dtypes.CODEBOOK_NAMES:
        raise FormatError("codebook values must be float32 or float16", rule="codebook")
    size = dtypes.itemsize(book_dtype)
    k, rest = divmod(len(tensor.codebook.values), size)
    if rest or not 1 <= k <= MAX_ALPHABET:
        raise FormatError(
            f"codebook of {len(tensor.codebook.values)} bytes is not 1 to {MAX_ALPHABET} {book_dtype} values",
            rule="codebook",
        )
    check_stream(tensor.codes, k, "codes")
    if tensor.encoding == pb.DENSE_CODES:
        if tensor.HasField("gaps") or tensor.index_bits:
            raise FormatError("a DENSE_CODES tensor has sparse fields", rule="encoding")
        if tensor.codes.count != numel:
            raise FormatError(f"{tensor.codes.count} codes for {numel} elements", rule="counts")
        return
    if any(tensor.codebook.values[:size]):
        raise FormatError("SPARSE_CODES needs codebook[0] == +0.0", rule="padding-zero")
    if not 1 <= tensor.index_bits <= MAX_CODE_LENGTH or not tensor.HasField("gaps"):
        raise FormatError(f"index_bits {tensor.index_bits} not in 1..{MAX_CODE_LENGTH}", rule="index-bits")
    check_stream(tensor.gaps, 1 << tensor.index_bits, "gaps")
    if tensor.gaps.count != tensor.codes.count:
        raise FormatError(f"{tensor.codes.count} codes but {tensor.gaps.count} gaps", rule="counts")
    if tensor.codes.count > numel:
        raise FormatError(f"{tensor.codes.count} entries for {numel} elements", rule="counts")


def check_stream(stream: pb.HuffmanStream, alphabet: int, what: str) -> None:
    """Rules of one Huffman stream record: table, chunking, sizes."""
    lengths = np.frombuffer(stream.code_lengths, dtype=np.uint8)
    if lengths.size != alphabet:
        raise FormatError(
            f"{what}: {lengths.size} code lengths for an alphabet of {alphabet}", rule="huffman-table"
        )
    try:
        huffman.check_table(lengths, stream.count)
    except FormatError as exc:
        raise FormatError(f"{what}: {exc.message}", rule=exc.rule) from None
    count, bits = stream.count, stream.bit_length
    if not 1 <= stream.chunk_size <= MAX_CHUNK_SIZE:
        raise FormatError(
            f"{what}: chunk size {stream.chunk_size} not in 1..{MAX_CHUNK_SIZE}", rule="huffman-chunks"
        )
    n_chunks = -(-count // stream.chunk_size)
    if len(stream.chunk_offsets) != max(0, n_chunks - 1):
        raise FormatError(
            f"{what}: {len(stream.chunk_offsets)} chunk offsets for {n_chunks} chunks", rule="huffman-chunks"
        )
    if count:
        used = lengths[lengths > 0]
        if not count * int(used.min()) <= bits <= count * int(used.max()):
            raise FormatError(f"{what}: {bits} bits cannot hold {count} symbols", rule="huffman-data")
    elif bits:
        raise FormatError(f"{what}: an empty stream has {bits} bits", rule="huffman-data")
    offsets = np.asarray(stream.chunk_offsets, dtype=np.uint64)
    if offsets.size and (offsets[0] == 0 or np.any(offsets[1:] <= offsets[:-1]) or offsets[-1] >= bits):
        raise FormatError(f"{what}: chunk offsets out of order or out of range", rule="huffman-chunks")
    length = stream.data.length if stream.HasField("data") else 0
    if length != -(-bits // 8):
        raise FormatError(f"{what}: {length} data bytes for {bits} bits", rule="huffman-data")


def check_layout(header: pb.Header, data_start: int, file_size: int) -> None:
    """Sections follow each other in header order, each at the next aligned offset."""
    end = 0
    for tensor in header.tensors:
        for section in sections_of(tensor):
            expected = align_up(end)
            if section.offset != expected:
                raise FormatError(
                    f"section at data offset {section.offset}, expected {expected}",
                    rule="section-layout",
                    tensor=tensor.name,
                    offset=data_start + min(section.offset, expected),
                )
            end = expected + section.length
    if data_start + end != file_size:
        rule = "truncated" if data_start + end > file_size else "file-size"
        raise FormatError(
            f"file is {file_size} bytes; its sections end at {data_start + end}",
            rule=rule,
            offset=min(file_size, data_start + end),
        )
