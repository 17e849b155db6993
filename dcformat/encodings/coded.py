"""What the two codebook encodings (dense_codes, sparse_codes) share: the codebook and the
Huffman streams, in the header and in the data."""

from __future__ import annotations

import numpy as np

from .. import dcnn_pb2 as pb
from .. import dtypes
from ..codec import decode as codec
from ..codec import huffman
from ..errors import FormatError, fail, stop
from ..layout import MAX_ALPHABET, MAX_CHUNK_SIZE
from ..tensors import Quantized
from .base import Payloads, SectionSource, cast, new_record, section


def new_coded_record(name: str, tensor: Quantized, encoding: int) -> tuple[pb.Tensor, np.ndarray]:
    """The record with its codebook and nonzeros set, and the codes' symbol frequencies."""
    record = new_record(name, tensor.shape, tensor.dtype, encoding)
    record.codebook.dtype = dtypes.to_enum(dtypes.name_of(tensor.codebook.dtype))
    record.codebook.values = tensor.codebook.astype(tensor.codebook.dtype.newbyteorder("<")).tobytes()
    decoded = dtypes.convert_floats(tensor.codebook, tensor.dtype)
    nonzero_code = dtypes.is_nonzero(decoded, tensor.dtype)
    freqs = huffman.frequencies(tensor.codes, tensor.codebook.size)
    record.nonzeros = int(freqs[nonzero_code].sum())
    return record, freqs


def decoded_bytes_of(tensor: Quantized) -> int:
    return int(np.prod(tensor.shape, dtype=object)) * dtypes.itemsize(tensor.dtype)


def encode_stream(out: pb.HuffmanStream, symbols: np.ndarray, freqs: np.ndarray, chunk_size: int) -> Payloads:
    """Huffman-code ``symbols`` into the stream record ``out``; its section's payload."""
    out.Clear()
    lengths = huffman.code_lengths(freqs)
    coded = huffman.encode(symbols, lengths, chunk_size, freqs)
    out.count = symbols.size
    out.code_lengths = lengths.tobytes()
    out.chunk_size = chunk_size
    out.chunk_offsets.extend(coded.offsets.tolist())
    out.bit_length = coded.bit_length
    return section(out.data, coded.data)


def check_codebook(record: pb.Tensor, dtype: str) -> int:
    """The rules on the codebook and the codes stream; returns the codebook's size."""
    if dtype not in dtypes.FLOAT_NAMES:
        stop(FormatError(f"coded tensors decode to floats, not {dtype}", rule="dtype"))
    if record.HasField("raw") or record.HasField("compression") or record.stored_dtype:
        fail(FormatError("a coded tensor has RAW or RAW_NARROW fields", rule="encoding"))
    if record.encoding in (pb.DENSE_CODES, pb.SPARSE_CODES) and (
        record.HasField("scales") or record.HasField("outliers")
    ):
        fail(FormatError("scales and outliers need a 1.1 encoding (*_CODES_EXT)", rule="encoding"))
    if not record.HasField("codebook") or not record.HasField("codes"):
        fail(FormatError("a coded tensor needs a codebook and a codes stream", rule="encoding"))
    book_dtype = dtypes.from_enum(record.codebook.dtype)
    if book_dtype not in dtypes.CODEBOOK_NAMES:
        stop(FormatError("codebook values must be float32 or float16", rule="codebook"))
    k, rest = divmod(len(record.codebook.values), dtypes.itemsize(book_dtype))
    if rest or not 1 <= k <= MAX_ALPHABET:
        stop(
            FormatError(
                f"codebook of {len(record.codebook.values)} bytes is not 1 to {MAX_ALPHABET} "
                f"{book_dtype} values",
                rule="codebook",
            )
        )
    check_stream(record.codes, k, "codes")
    return k


def check_stream(stream: pb.HuffmanStream, alphabet: int, what: str) -> None:
    """Rules of one Huffman stream record: table, chunking, sizes. The native extension checks a
    record in one call; the checks below run where it is off or finds a rule broken."""
    offsets = np.asarray(stream.chunk_offsets, dtype=np.uint64)
    length = stream.data.length if stream.HasField("data") else 0
    if codec.enabled() and codec._native.stream_ok(
        stream.code_lengths,
        stream.count,
        stream.chunk_size,
        stream.bit_length,
        offsets,
        length,
        alphabet,
        MAX_CHUNK_SIZE,
    ):
        return
    lengths = np.frombuffer(stream.code_lengths, dtype=np.uint8)
    if lengths.size != alphabet:
        fail(
            FormatError(
                f"{what}: {lengths.size} code lengths for an alphabet of {alphabet}", rule="huffman-table"
            )
        )
    try:
        huffman.check_table(lengths, stream.count)
    except FormatError as exc:
        fail(FormatError(f"{what}: {exc.message}", rule=exc.rule))
    count, bits = stream.count, stream.bit_length
    if not 1 <= stream.chunk_size <= MAX_CHUNK_SIZE:
        stop(
            FormatError(
                f"{what}: chunk size {stream.chunk_size} not in 1..{MAX_CHUNK_SIZE}", rule="huffman-chunks"
            )
        )
    n_chunks = -(-count // stream.chunk_size)
    if len(stream.chunk_offsets) != max(0, n_chunks - 1):
        fail(
            FormatError(
                f"{what}: {len(stream.chunk_offsets)} chunk offsets for {n_chunks} chunks",
                rule="huffman-chunks",
            )
        )
    if count:
        used = lengths[lengths > 0]
        if not count * int(used.min()) <= bits <= count * int(used.max()):
            fail(FormatError(f"{what}: {bits} bits cannot hold {count} symbols", rule="huffman-data"))
    elif bits:
        fail(FormatError(f"{what}: an empty stream has {bits} bits", rule="huffman-data"))
    if offsets.size and (offsets[0] == 0 or np.any(offsets[1:] <= offsets[:-1]) or offsets[-1] >= bits):
        fail(FormatError(f"{what}: chunk offsets out of order or out of range", rule="huffman-chunks"))
    if offsets.size:  # chunk j starts in [j*C*min_len, j*C*max_len] and leaves room for the rest
        used = lengths[lengths > 0]
        lo, hi = int(used.min()), int(used.max())
        # int64 when no product can overflow it (all real files), else exact Python ints
        wide = max(count * hi, bits) >= 1 << 62
        kind = object if wide else np.int64
        before = np.arange(1, offsets.size + 1, dtype=kind) * stream.chunk_size
        starts = offsets.astype(kind)
        after = bits - starts
        if (
            np.any(starts < before * lo)
            or np.any(starts > before * hi)
            or np.any(after < (count - before) * lo)
            or np.any(after > (count - before) * hi)
        ):
            fail(
                FormatError(
                    f"{what}: a chunk offset lies outside [j*C*min_len, j*C*max_len] or leaves the rest "
                    "of the stream too few or too many bits",
                    rule="huffman-chunks",
                )
            )
    if length != -(-bits // 8):
        fail(FormatError(f"{what}: {length} data bytes for {bits} bits", rule="huffman-data"))


def entries_and_bits(record: pb.Tensor) -> tuple[int, int]:
    k = len(record.codebook.values) // dtypes.itemsize(dtypes.from_enum(record.codebook.dtype))
    return record.codes.count, max(1, (k - 1).bit_length())


def codebook(record: pb.Tensor) -> np.ndarray:
    storage = dtypes.storage(dtypes.from_enum(record.codebook.dtype))
    return np.frombuffer(record.codebook.values, dtype=storage).copy()


def decoded_codebook(record: pb.Tensor) -> np.ndarray:
    """The codebook in the stored form of the tensor's dtype."""
    return dtypes.convert_floats(codebook(record), dtypes.from_enum(record.dtype))


def values_and_flags(
    source: SectionSource, record: pb.Tensor, out_kind: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """Codebook values in the stored form of ``out_kind`` (decoding goes straight to it), and
    which are nonzero (when verifying)."""
    kind = dtypes.from_enum(record.dtype)
    book = decoded_codebook(record)
    flags = dtypes.is_nonzero(book, kind).astype(np.uint8) if source.verify else None
    return cast(book, kind, out_kind), flags
