"""SPARSE_CODES: Huffman-coded codebook indices of the stored entries and Huffman-coded
relative indices (gaps) of their positions, with padding-zero fillers (spec section 5)."""

from __future__ import annotations

import numpy as np

from .. import dcnn_pb2 as pb
from .. import dtypes
from ..codec import decode as codec
from ..codec import gaps, huffman
from ..errors import EncodeError, FormatError, fail, stop
from ..layout import MAX_CODE_LENGTH, MAX_EXPANSION
from ..tensors import Codes, Quantized, Raw
from . import coded
from .base import EncodedTensor, Payloads, SectionSource, expansion_ok, new_in, numel_of

ENUM = pb.SPARSE_CODES
NAME = "SPARSE_CODES"
entries_and_bits = coded.entries_and_bits


def accepts(tensor: Raw | Quantized) -> bool:
    return isinstance(tensor, Quantized) and tensor.sparse and not tensor.extended


def encode(name: str, tensor: Quantized, chunk_size: int) -> EncodedTensor:
    record, _ = coded.new_coded_record(name, tensor, pb.SPARSE_CODES)
    numel = int(np.prod(tensor.shape, dtype=object))
    decoded_bytes = coded.decoded_bytes_of(tensor)
    if tensor.index_bits is None:
        candidates = range(gaps.best_index_bits(tensor.positions, tensor.codes, tensor.codebook.size), 0, -1)
    else:
        candidates = [tensor.index_bits]
    for bits in candidates:  # fewer index bits add fillers, bounding the expansion
        for tail_numel in (None, numel):  # then trailing fillers over a zero tail
            payloads = _streams(record, tensor, bits, chunk_size, tail_numel)
            if expansion_ok(decoded_bytes, sum(len(data) for _, data in payloads)):
                return EncodedTensor(record, payloads)
    raise EncodeError(
        f"tensor {name!r} is too sparse for index_bits {tensor.index_bits}: it would decode "
        f"to over {MAX_EXPANSION}x its stored size; let the writer pick index_bits"
    )


def _streams(
    record: pb.Tensor, tensor: Quantized, bits: int, chunk_size: int, tail_numel: int | None
) -> Payloads:
    entry_gaps, entry_codes = gaps.with_fillers(tensor.positions, tensor.codes, bits, tail_numel)
    record.index_bits = bits
    code_freqs = huffman.frequencies(entry_codes, tensor.codebook.size)
    gap_freqs = huffman.frequencies(entry_gaps, 1 << bits)
    return coded.encode_stream(record.codes, entry_codes, code_freqs, chunk_size) + coded.encode_stream(
        record.gaps, entry_gaps, gap_freqs, chunk_size
    )


def check(record: pb.Tensor, dtype: str, numel: int, decoded_bytes: int) -> None:
    k = coded.check_codebook(record, dtype)
    if any(record.codebook.values[: len(record.codebook.values) // k]):
        fail(FormatError("SPARSE_CODES needs codebook[0] == +0.0", rule="padding-zero"))
    if not 1 <= record.index_bits <= MAX_CODE_LENGTH or not record.HasField("gaps"):
        stop(FormatError(f"index_bits {record.index_bits} not in 1..{MAX_CODE_LENGTH}", rule="index-bits"))
    coded.check_stream(record.gaps, 1 << record.index_bits, "gaps")
    if record.gaps.count != record.codes.count:
        stop(FormatError(f"{record.codes.count} codes but {record.gaps.count} gaps", rule="counts"))
    if record.codes.count > numel:
        stop(FormatError(f"{record.codes.count} entries for {numel} elements", rule="counts"))


def decode(source: SectionSource, record: pb.Tensor, out_kind: str) -> tuple[np.ndarray, int]:
    values, flags = coded.values_and_flags(source, record, out_kind)
    return codec.decode_sparse(
        source.symbols(record.codes),
        source.stream(record.gaps),
        numel_of(record),
        values,
        flags,
        source.threads,
        new=new_in(source),
    )


def nonzero_entries(source: SectionSource, record: pb.Tensor) -> tuple[np.ndarray, np.ndarray]:
    kind = dtypes.from_enum(record.dtype)
    codes = source.symbols(record.codes)
    positions, values = _positions(source, record), coded.decoded_codebook(record)[codes]
    keep = dtypes.is_nonzero(values, kind)
    return positions[keep], values[keep]


def codes(source: SectionSource, record: pb.Tensor) -> Codes:
    symbols = source.symbols(record.codes)
    positions = _positions(source, record)
    keep = symbols != 0  # fillers (code 0) left out
    return Codes(coded.codebook(record), symbols[keep], positions[keep], tuple(record.shape))


def _positions(source: SectionSource, record: pb.Tensor) -> np.ndarray:
    positions = gaps.positions_of(source.symbols(record.gaps))
    if positions.size and positions[-1] >= numel_of(record):
        stop(
            FormatError(
                f"gaps run to position {int(positions[-1])}, past the tensor's {numel_of(record)} elements",
                rule="positions",
            )
        )
    return positions
