"""Parse the preamble and header and check every rule that needs no section data
(each encoding's own rules live in its module under ``encodings/``).

All checks here are cheap (no decoding), so opening a file runs them all: a hostile
header is rejected before anything is allocated from its declared sizes.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import zstandard
from google.protobuf.message import DecodeError

from .. import dcnn_pb2 as pb
from .. import dtypes, encodings
from ..encodings import compact
from ..encodings.base import numel_of, placed_sections, sections_of
from ..errors import ChecksumError, FormatError, LimitError, VersionError, fail, stop
from ..layout import (
    EXPANSION_SLACK,
    MAGIC,
    MAJOR,
    MAX_ELEMENTS,
    MAX_EXPANSION,
    MAX_HEADER_BYTES,
    MAX_NAME_BYTES,
    MAX_RANK,
    MINOR,
    PREAMBLE,
    PREAMBLE_SIZE,
    align_up,
)


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
            stop(
                FormatError(
                    f"file is {file_size} bytes, too short for a .dcnn preamble",
                    rule="truncated",
                    offset=file_size,
                )
            )
        stop(FormatError("not a .dcnn file (bad magic bytes)", rule="magic", offset=0))
    magic, major, minor, header_length, _, preamble_crc = PREAMBLE.unpack(head[:PREAMBLE_SIZE])
    if magic != MAGIC:
        if magic[1:4] == MAGIC[1:4]:
            fail(
                FormatError(
                    "magic bytes damaged: the file went through a text-mode or 7-bit transfer",
                    rule="magic",
                    offset=0,
                )
            )
        fail(FormatError("not a .dcnn file (bad magic bytes)", rule="magic", offset=0))
    if zlib.crc32(head[: PREAMBLE_SIZE - 4]) != preamble_crc:
        fail(ChecksumError("preamble checksum mismatch", rule="preamble-crc", offset=8))
    if major != MAJOR:
        stop(
            VersionError(
                f"format major version {major} is not supported (this reader implements {MAJOR})",
                rule="version",
                offset=8,
            )
        )
    if header_length > MAX_HEADER_BYTES:
        stop(
            LimitError(
                f"header of {header_length} bytes exceeds the limit {MAX_HEADER_BYTES}",
                rule="header-size",
                offset=12,
            )
        )
    data_start = align_up(PREAMBLE_SIZE + header_length)
    if data_start > file_size:
        stop(
            FormatError(
                f"file of {file_size} bytes ends inside its header", rule="truncated", offset=file_size
            )
        )
    return Preamble(major, minor, header_length, data_start)


def parse_header(head: bytes, preamble: Preamble) -> pb.Header:
    """Check the header checksum and parse it (unknown fields are kept and ignored)."""
    raw = head[PREAMBLE_SIZE : PREAMBLE_SIZE + preamble.header_length]
    expected_crc = PREAMBLE.unpack(head[:PREAMBLE_SIZE])[4]
    if zlib.crc32(raw) != expected_crc:
        fail(ChecksumError("header checksum mismatch", rule="header-crc", offset=PREAMBLE_SIZE))
    header = pb.Header()
    try:
        header.ParseFromString(raw)
    except (DecodeError, ValueError, RuntimeError) as exc:
        stop(FormatError(f"header does not parse: {exc}", rule="header-parse", offset=PREAMBLE_SIZE))
    return header


def inflate_header(header: pb.Header, minor: int) -> pb.Header:
    """The header a ``header_zstd`` holds (spec 3, format 1.2), checked; or ``header`` itself."""
    if not header.header_zstd:
        return header
    if minor < compact.SINCE_MINOR:
        fail(
            VersionError(
                f"header_zstd is a format {MAJOR}.{compact.SINCE_MINOR} field in a file that declares "
                f"{MAJOR}.{minor}",
                rule="version",
            )
        )
    if len(header.ListFields()) > 1:
        fail(FormatError("a header with header_zstd has other fields", rule="header-parse"))
    raw = zstd_frame(header.header_zstd, MAX_HEADER_BYTES, "header_zstd", "header-parse", "header-size")
    inner = pb.Header()
    try:
        inner.ParseFromString(raw)
    except (DecodeError, ValueError, RuntimeError) as exc:
        stop(FormatError(f"header_zstd does not parse: {exc}", rule="header-parse"))
    if inner.header_zstd:
        stop(FormatError("header_zstd holds another header_zstd", rule="header-parse"))
    if not any(True for t in inner.tensors for _ in sections_of(t)):  # so older readers see a data area
        fail(FormatError("a compressed header describes no section", rule="header-parse"))
    return inner


def zstd_frame(data: bytes, limit: int, what: str, rule: str, limit_rule: str) -> bytes:
    """The content of ``data``, one zstd frame that declares its size, at most ``limit`` and
    ``1024 * len(data) + 65536`` bytes, and yields exactly it (no dictionary, nothing after)."""
    try:
        size = zstandard.get_frame_parameters(data).content_size
    except zstandard.ZstdError as exc:
        stop(FormatError(f"{what} is not a zstd frame: {exc}", rule=rule))
    if size == zstandard.CONTENTSIZE_UNKNOWN or size > min(
        limit, MAX_EXPANSION * len(data) + EXPANSION_SLACK
    ):
        stop(
            LimitError(f"{what} declares {size} bytes: unknown or over the expansion limit", rule=limit_rule)
        )
    try:
        frame = zstandard.ZstdDecompressor().decompressobj()
        out = frame.decompress(data)
    except zstandard.ZstdError as exc:
        stop(FormatError(f"{what} does not decompress: {exc}", rule=rule))
    if not frame.eof or frame.unused_data or len(out) != size:
        fail(FormatError(f"{what} is not exactly one zstd frame of its declared size", rule=rule))
    return out


def check_source(source: pb.Source, minor: int) -> bytes:
    """The skeleton, after the rules of a zstd skeleton (spec 3): a 1.1 field, alone, one frame
    that declares a size within the expansion limit and yields it."""
    if not source.skeleton_zstd:
        return source.skeleton
    if minor < 1:
        fail(VersionError("skeleton_zstd is a format 1.1 field in a file that declares 1.0", rule="version"))
    if source.skeleton:
        fail(FormatError("the source has both skeleton and skeleton_zstd", rule="source"))
    return zstd_frame(
        source.skeleton_zstd,
        MAX_EXPANSION * len(source.skeleton_zstd) + EXPANSION_SLACK,
        "skeleton_zstd",
        "source",
        "source",
    )


def check_version(tensor: pb.Tensor, minor: int) -> None:
    """A file whose minor version is newer than this reader's may use encodings it does not
    know: that is "needs a newer reader" (rule ``version``), not a broken file; and a tensor
    whose encoding is newer than the file's declared minor version breaks ``version``."""
    if tensor.encoding not in encodings.ENCODINGS and minor > MINOR:
        stop(
            VersionError(
                f"encoding {tensor.encoding} needs a newer reader: the file is format {MAJOR}.{minor}, "
                f"this reader implements {MAJOR}.{MINOR}",
                rule="version",
                offset=10,
            )
        )
    since = encodings.SINCE_MINOR.get(tensor.encoding, 0)
    if since > minor:
        fail(
            VersionError(
                f"{pb.Encoding.Name(tensor.encoding)} is a format {MAJOR}.{since} encoding in a file that "
                f"declares {MAJOR}.{minor}",
                rule="version",
                offset=10,
            )
        )


def check_tensor(tensor: pb.Tensor, minor: int = MINOR, expanded: list[int] | None = None) -> None:
    """Every rule on one tensor record that needs no section data, in the order of spec 11
    (``minor``: the file's declared minor version). Packed tables and codebooks (1.2) are
    expanded into the record; ``expanded`` counts the table lengths of a whole file."""
    if not tensor.name or len(tensor.name.encode()) > MAX_NAME_BYTES:
        fail(FormatError(f"tensor names must be 1 to {MAX_NAME_BYTES} bytes", rule="tensor-name"))
    check_version(tensor, minor)
    grown = compact.expand(tensor, minor)
    if expanded is not None:
        expanded[0] += grown
        compact.check_expanded(expanded[0])
    if len(tensor.shape) > MAX_RANK:
        stop(LimitError(f"rank {len(tensor.shape)} exceeds {MAX_RANK}", rule="shape"))
    # Zero dimensions count as 1 here, so an empty tensor's shape is bounded too (numpy needs that).
    span = 1
    for d in tensor.shape:
        span *= max(d, 1)
        if span > MAX_ELEMENTS:
            stop(LimitError(f"shape {list(tensor.shape)} exceeds {MAX_ELEMENTS} elements", rule="shape"))
    numel = numel_of(tensor)
    dtype = dtypes.from_enum(tensor.dtype)
    if dtype is None:
        stop(FormatError(f"unknown dtype {tensor.dtype}", rule="dtype"))
    if tensor.nonzeros > numel:
        fail(FormatError(f"{tensor.nonzeros} nonzeros in {numel} elements", rule="nonzeros"))
    for section in sections_of(tensor):
        if section.length == 0:
            fail(FormatError("a present section must not be empty", rule="section-layout"))
    decoded_bytes = numel * dtypes.itemsize(dtype)
    stored = sum(s.length for s in sections_of(tensor))
    if decoded_bytes > MAX_EXPANSION * stored + EXPANSION_SLACK:
        stop(
            LimitError(
                f"{decoded_bytes} decoded bytes from {stored} stored bytes exceeds the "
                f"expansion limit {MAX_EXPANSION}",
                rule="expansion",
            )
        )
    encodings.of(tensor).check(tensor, dtype, numel, decoded_bytes)


def check_layout(header: pb.Header, data_start: int, file_size: int, minor: int = MINOR) -> dict[int, int]:
    """Sections follow each other in header order, each at the next aligned offset (from 1.2:
    only uncompressed RAW sections are aligned, the others follow the previous section).
    Returns, by section offset, where the zero padding after the section ends (data area)."""
    end = 0
    starts = []
    for tensor in header.tensors:
        for section, aligned in placed_sections(tensor):
            expected = align_up(end) if aligned or minor < compact.SINCE_MINOR else end
            if section.offset != expected:
                fail(
                    FormatError(
                        f"section at data offset {section.offset}, expected {expected}",
                        rule="section-layout",
                        tensor=tensor.name,
                        offset=data_start + min(section.offset, expected),
                    )
                )
            end = section.offset + section.length  # = expected + length, unless waived
            starts.append((section.offset, end))
    if data_start + end != file_size:
        error = FormatError(
            f"file is {file_size} bytes; its sections end at {data_start + end}",
            rule="truncated" if data_start + end > file_size else "file-size",
            offset=min(file_size, data_start + end),
        )
        stop(error) if error.rule == "truncated" else fail(error)
    pad_ends = [start for start, _ in starts[1:]] + [end][: len(starts)]
    return {start: pad for (start, _), pad in zip(starts, pad_ends, strict=True)}
