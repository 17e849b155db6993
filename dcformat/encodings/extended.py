"""DENSE_CODES_EXT and SPARSE_CODES_EXT (format 1.1, spec 5.6 and 5.7): a coded tensor as
DENSE_CODES or SPARSE_CODES, plus per-channel scales along axis 0 that multiply its codebook
values, and/or exact outliers written over its decoded codes.

Decoding runs the base encoding's Huffman kernels (native or numpy) into float32 values,
multiplies each row by its scale, rounds to the dtype, then writes the outliers; each step is
one vectorized pass."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np
import zstandard

from .. import dcnn_pb2 as pb
from .. import dtypes
from ..codec import decode as codec
from ..codec import varint
from ..errors import EncodeError, FormatError, fail, stop
from ..layout import MAX_EXPANSION
from ..tensors import Codes, Quantized, Raw
from . import coded, dense_codes, sparse_codes
from .base import (
    EncodedTensor,
    SectionSource,
    cast,
    expansion_ok,
    new_in,
    numel_of,
    section,
    zstd_decompressor,
)

ZSTD_LEVEL = 19  # outlier sections are small; the best level costs little


@dataclass(frozen=True)
class Extended:
    """One of the two 1.1 encodings, built over its 1.0 base module."""

    ENUM: int
    NAME: str
    base: ModuleType

    def accepts(self, tensor: Raw | Quantized) -> bool:
        return (
            isinstance(tensor, Quantized) and tensor.extended and tensor.sparse == (self.base is sparse_codes)
        )

    def encode(self, name: str, tensor: Quantized, chunk_size: int) -> EncodedTensor:
        plain = Quantized(
            tensor.codebook, tensor.codes, tensor.shape, tensor.positions, tensor.index_bits, tensor.dtype
        )
        encoded = self.base.encode(name, plain, chunk_size)
        record = encoded.record
        record.encoding = self.ENUM
        if tensor.scales is not None:
            record.scales.dtype = dtypes.to_enum(dtypes.name_of(tensor.scales.dtype))
            record.scales.rows_per_scale = tensor.rows_per_scale
            record.scales.values = tensor.scales.astype(tensor.scales.dtype.newbyteorder("<")).tobytes()
        payloads = list(encoded.payloads)
        if tensor.outliers is not None:
            payloads += _outlier_sections(record.outliers, *tensor.outliers)
        record.nonzeros = _reference_nonzeros(tensor)
        if not expansion_ok(coded.decoded_bytes_of(tensor), sum(len(d) for _, d in payloads)):
            raise EncodeError(f"tensor {name!r} would decode to over {MAX_EXPANSION}x its stored size")
        return EncodedTensor(record, payloads)

    def check(self, record: pb.Tensor, dtype: str, numel: int, decoded_bytes: int) -> None:
        self.base.check(record, dtype, numel, decoded_bytes)
        if not record.HasField("scales") and not record.HasField("outliers"):
            fail(FormatError(f"a {self.NAME} tensor needs scales or outliers", rule="encoding"))
        if record.HasField("scales"):
            scales_of(record)
        if record.HasField("outliers"):
            check_outliers(record.outliers, dtype, numel)

    def entries_and_bits(self, record: pb.Tensor) -> tuple[int, int]:
        return coded.entries_and_bits(record)

    def decode(self, source: SectionSource, record: pb.Tensor, out_kind: str) -> tuple[np.ndarray, int]:
        """Codes (times scales, in float32, counting nonzeros in the same pass), rounded to the
        dtype, then the outliers; the nonzeros count follows each step."""
        kind = dtypes.from_enum(record.dtype)
        if record.HasField("scales"):
            book = coded.codebook(record).astype(np.float32)
            row_scales = np.repeat(scales_of(record), record.scales.rows_per_scale)[: record.shape[0]]
            new = new_in(source) if kind == out_kind == "float32" else None  # else converted: a copy
            if self.base is dense_codes:
                out = codec.decode_values(source.stream(record.codes), book, None, source.threads, new)[0]
                nonzeros = codec.scale_rows(out, row_scales)
            else:
                symbols, stream = source.symbols(record.codes), source.stream(record.gaps)
                out, nonzeros = codec.decode_sparse(
                    symbols, stream, numel_of(record), book, None, source.threads, row_scales, new
                )
            if kind != "float32":
                out = dtypes.convert_floats(out, kind)
                if kind != "float64" and source.verify:  # rounding may flush products to zero
                    nonzeros = int(np.count_nonzero(dtypes.is_nonzero(out, kind)))
        else:
            out, nonzeros = self.base.decode(source, record, kind)
        if record.HasField("outliers"):
            positions, values = outliers_of(source, record)
            replaced = np.count_nonzero(dtypes.is_nonzero(out[positions], kind))
            out[positions] = values
            nonzeros += int(np.count_nonzero(dtypes.is_nonzero(values, kind))) - int(replaced)
        return cast(out, kind, out_kind), nonzeros if source.verify else 0

    def nonzero_entries(self, source: SectionSource, record: pb.Tensor) -> None:
        return None

    def codes(self, source: SectionSource, record: pb.Tensor) -> Codes:
        base = self.base.codes(source, record)
        rows = record.shape[0] if record.HasField("scales") else 0
        scales = (
            np.repeat(scales_of(record), record.scales.rows_per_scale)[:rows]
            if record.HasField("scales")
            else None
        )
        outliers = outliers_of(source, record) if record.HasField("outliers") else None
        return Codes(base.codebook, base.codes, base.positions, base.shape, scales, outliers)


DENSE = Extended(pb.DENSE_CODES_EXT, "DENSE_CODES_EXT", dense_codes)
SPARSE = Extended(pb.SPARSE_CODES_EXT, "SPARSE_CODES_EXT", sparse_codes)


def scales_of(record: pb.Tensor) -> np.ndarray:
    """The scales as float32, after the rules of spec 5.6 (FormatError, rule ``scales``)."""
    scales = record.scales
    kind = dtypes.from_enum(scales.dtype)
    if kind not in dtypes.CODEBOOK_NAMES:
        fail(FormatError("scale values must be float32 or float16", rule="scales"))
    if not record.shape:
        fail(FormatError("a scalar has no rows to scale", rule="scales"))
    if scales.rows_per_scale < 1:
        stop(FormatError("rows_per_scale must be >= 1", rule="scales"))
    expected = -(-record.shape[0] // scales.rows_per_scale) * dtypes.itemsize(kind)
    if len(scales.values) != expected:
        fail(FormatError(f"{len(scales.values)} bytes of scales, expected {expected}", rule="scales"))
    values = np.frombuffer(scales.values, dtype=dtypes.storage(kind)).astype(np.float32)
    if not np.all(np.isfinite(values) & (values > 0)):
        fail(FormatError("every scale must be finite and > 0", rule="scales"))
    return values


def check_outliers(outliers: pb.Outliers, dtype: str, numel: int) -> None:
    """The header rules of spec 5.7 (rule ``outliers``)."""
    count = outliers.count
    if not 1 <= count <= numel:
        stop(FormatError(f"{count} outliers in {numel} elements", rule="outliers"))
    if not outliers.HasField("positions") or not outliers.HasField("values"):
        stop(FormatError("outliers need a positions and a values section", rule="outliers"))
    if outliers.compression == pb.COMPRESSION_NONE:
        if not count <= outliers.positions.length <= varint.MAX_BYTES * count:
            stop(
                FormatError(f"{outliers.positions.length} bytes of {count} position varints", rule="outliers")
            )
        if outliers.values.length != count * dtypes.itemsize(dtype):
            stop(FormatError(f"{outliers.values.length} bytes of {count} {dtype} values", rule="outliers"))
    elif outliers.compression != pb.COMPRESSION_ZSTD:
        fail(FormatError(f"unknown compression {outliers.compression}", rule="encoding"))


def outliers_of(source: SectionSource, record: pb.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Positions and stored-form values of the outliers."""
    outliers, kind = record.outliers, dtypes.from_enum(record.dtype)
    count, numel = outliers.count, numel_of(record)
    positions = source.section(outliers.positions)
    values = source.section(outliers.values)
    if outliers.compression == pb.COMPRESSION_ZSTD:
        positions = _unzstd(positions, count, varint.MAX_BYTES * count)
        size = count * dtypes.itemsize(kind)
        values = _unzstd(values, size, size)
    return varint.decode_positions(positions, count, numel, "outliers"), values.view(dtypes.storage(kind))


def _outlier_sections(out: pb.Outliers, positions: np.ndarray, values: np.ndarray) -> list:
    out.count = positions.size
    data = [varint.encode_gaps(positions), values.astype(values.dtype.newbyteorder("<")).tobytes()]
    packer = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True, write_checksum=False)
    packed = [packer.compress(d) for d in data]
    if sum(map(len, packed)) < sum(map(len, data)):
        out.compression, data = pb.COMPRESSION_ZSTD, packed
    return section(out.positions, data[0]) + section(out.values, data[1])


def _unzstd(data: np.ndarray, low: int, high: int) -> np.ndarray:
    """One zstd frame declaring a size in [low, high] and yielding exactly that (rule ``outliers``)."""
    try:
        size = zstandard.get_frame_parameters(data).content_size
        if not low <= size <= high:
            stop(FormatError(f"zstd frame declares {size} bytes, not {low}..{high}", rule="outliers"))
        frame = zstd_decompressor().decompressobj()
        out = frame.decompress(data)
    except zstandard.ZstdError as exc:
        stop(FormatError(f"outlier zstd data does not decompress: {exc}", rule="outliers"))
    if not frame.eof or frame.unused_data or len(out) != size:
        stop(FormatError("an outlier section is not exactly one zstd frame of its size", rule="outliers"))
    return np.frombuffer(out, dtype=np.uint8)


BLOCK = 1 << 20  # elements decoded at a time to count the nonzeros


def _reference_nonzeros(tensor: Quantized) -> int:
    """The decoded tensor's nonzeros, by the decoder's rules in numpy, a block at a time."""
    numel = int(np.prod(tensor.shape, dtype=np.int64))
    book = tensor.codebook.astype(np.float32)
    if tensor.scales is None:
        book = dtypes.convert_floats(tensor.codebook, tensor.dtype)
    codes = np.zeros(0, np.uint8) if tensor.sparse else tensor.codes
    if tensor.sparse:  # the entries' codes at their positions; every other element is zero
        where = np.searchsorted(tensor.positions, np.arange(0, numel, BLOCK))
    row_scales, width = None, 1
    if tensor.scales is not None and numel:
        rows = tensor.shape[0]
        row_scales = np.repeat(tensor.scales.astype(np.float32), tensor.rows_per_scale)[:rows]
        width = numel // rows
    outliers = tensor.outliers
    nonzeros = 0
    for block, first in enumerate(range(0, numel, BLOCK)):
        stop = min(numel, first + BLOCK)
        if tensor.sparse:
            out = np.zeros(stop - first, dtype=book.dtype)
            low, high = where[block], where[block + 1] if block + 1 < where.size else tensor.positions.size
            out[tensor.positions[low:high] - first] = book[tensor.codes[low:high]]
        else:
            out = book[codes[first:stop]]
        if row_scales is not None:
            out *= row_scales[np.arange(first, stop) // width]
            out = dtypes.convert_floats(out, tensor.dtype)
        if outliers is not None:
            low, high = np.searchsorted(outliers[0], [first, stop])
            out[outliers[0][low:high] - first] = outliers[1][low:high]
        nonzeros += int(np.count_nonzero(dtypes.is_nonzero(out, tensor.dtype)))
    return nonzeros
