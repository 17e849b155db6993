"""Regenerate the conformance vectors: python spec/vectors/generate.py [OUT_DIR].

Valid vectors are written with the reference writer, each beside NAME.npz holding the
expected decoded tensors. Invalid vectors are valid files with exactly one rule broken; the
header is re-serialized with correct checksums so that each reaches the check it targets.
Output is deterministic.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zstandard

import dcformat
from dcformat import dcnn_pb2 as pb
from dcformat.file.header import inflate_header
from dcformat.layout import MAGIC, PREAMBLE, PREAMBLE_SIZE, align_up

PRODUCER = "dcnn conformance vectors"
# Valid vectors whose bytes hold zstd output (which may change with the zstd library version).
ZSTD_VECTORS = {"raw_zstd", "outliers_zstd", "source_zstd", "raw_narrow"}


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _sparse_codes(shape: tuple[int, ...], keep: float, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = _rng(seed)
    numel = int(np.prod(shape))
    positions = np.flatnonzero(rng.random(numel) < keep)
    codes = rng.integers(1, k, positions.size)
    return positions, codes


def valid_vectors() -> dict[str, tuple[dict, dict]]:
    """name -> (tensors for the writer, writer options)."""
    rng = _rng(1)
    out: dict[str, tuple[dict, dict]] = {}
    raw = {
        "float32": rng.normal(size=(3, 5)).astype(np.float32),
        "float16": rng.normal(size=(4,)).astype(np.float16),
        "bfloat16": dcformat.Raw(
            np.array([0x3F80, 0xC000, 0x7F80, 0x0000, 0x8000], np.uint16), dtype="bfloat16"
        ),
        "float64": np.array([np.pi, -0.0, np.inf]),
        "int8": np.array([-128, 0, 127], np.int8),
        "int16": np.array([[-32768, 1], [2, 32767]], np.int16),
        "int32": np.arange(-3, 3, dtype=np.int32),
        "int64": np.array([-(2**63), 2**63 - 1], np.int64),
        "uint8": np.arange(256, dtype=np.uint8).reshape(16, 16),
        "uint16": np.array([0, 65535], np.uint16),
        "uint32": np.array([2**32 - 1], np.uint32),
        "uint64": np.array([2**64 - 1], np.uint64),
        "bool": np.array([[True, False, True]]),
        "scalar": np.array(2.5, np.float32),
        "empty": np.zeros((0, 7), np.float32),
    }
    out["raw_dtypes"] = (raw, {})
    compressible = np.repeat(np.arange(64, dtype=np.float32), 64).reshape(64, 64)
    out["raw_zstd"] = ({"blocks": dcformat.Raw(compressible, zstd_level=3)}, {})

    codebook = np.linspace(-1, 1, 16, dtype=np.float32)
    codes = rng.integers(0, 16, (8, 9))
    out["dense_codes"] = (
        {
            "f32": dcformat.Quantized(codebook, codes, (8, 9)),
            "f16_book": dcformat.Quantized(codebook.astype(np.float16), codes, (8, 9)),
            "to_f16": dcformat.Quantized(codebook, codes, (8, 9), dtype="float16"),
            "to_bf16": dcformat.Quantized(codebook, codes, (8, 9), dtype="bfloat16"),
            "to_f64": dcformat.Quantized(codebook, codes, (72,), dtype="float64"),
            "conv": dcformat.Quantized(codebook, rng.integers(0, 16, (4, 2, 3, 3)), (4, 2, 3, 3)),
        },
        {},
    )
    book = np.concatenate([[0.0], np.linspace(-0.5, 0.5, 31)]).astype(np.float32)
    positions, sparse_codes = _sparse_codes((20, 30), 0.1, 32, 2)
    out["sparse_codes"] = ({"fc": dcformat.Quantized(book, sparse_codes, (20, 30), positions=positions)}, {})
    out["sparse_fillers"] = (
        {
            "b1": dcformat.Quantized(book, [3, 4, 5], (100,), positions=[0, 50, 99], index_bits=1),
            "b2_huge_gap": dcformat.Quantized(book, [1, 2], (10, 100), positions=[3, 997], index_bits=2),
            "b16": dcformat.Quantized(book, sparse_codes, (20, 30), positions=positions, index_bits=16),
        },
        {},
    )
    out["one_symbol"] = (
        {
            "dense_constant": dcformat.Quantized(np.array([0.25], np.float32), np.zeros(50, int), (5, 10)),
            "sparse_single": dcformat.Quantized(book, [7], (6, 6), positions=[17], index_bits=5),
        },
        {},
    )
    out["empty_streams"] = (
        {
            "no_entries": dcformat.Quantized(book, np.zeros(0, int), (4, 4), positions=np.zeros(0, int)),
            "empty_dense": dcformat.Quantized(codebook, np.zeros((0, 3), int), (0, 3)),
            "empty_sparse": dcformat.Quantized(book, np.zeros(0, int), (3, 0), positions=np.zeros(0, int)),
        },
        {},
    )
    many = rng.integers(0, 5, 1000)
    out["chunked"] = (
        {"stream": dcformat.Quantized(codebook[:5], many, (1000,))},
        {"chunk_size": 7},
    )
    skewed = np.minimum(rng.geometric(0.05, 3000) - 1, 1023)
    out["large_alphabet"] = (
        {"k1024": dcformat.Quantized(rng.normal(size=1024).astype(np.float16), skewed, (3000,))},
        {},
    )
    out["empty_huge_rows"] = ({"rows": np.zeros((2**33, 0), np.float32)}, {})
    out["metadata_source"] = (
        {"w": np.ones((2, 2), np.float32)},
        {
            "metadata": {"framework": "pytorch", "note": "ünïcode ✓"},
            "source": dcformat.Source("onnx", b"\x08\x07skeleton", {"opset": "17"}),
        },
    )
    prototxt = "".join(
        f'layer {{ name: "fire{i}/squeeze1x1" type: "Convolution" bottom: "pool{i}" '
        f'top: "fire{i}/squeeze1x1" '
        f"convolution_param {{ num_output: {16 * i} kernel_size: 1 }} }}\n"
        for i in range(2, 10)
    ).encode()
    out["source_zstd"] = (
        {"w": np.ones((2, 2), np.float32)},
        {"source": dcformat.Source("caffe-release", prototxt)},
    )
    out.update(format_1_1_vectors(rng))
    out.update(coverage_vectors())
    out.update(format_1_2_vectors(rng))
    out.update(format_1_3_vectors(rng))
    return out


def format_1_2_vectors(rng: np.random.Generator) -> dict[str, tuple[dict, dict]]:
    """Packed tables and codebooks and the 1.2 layout (spec 4, 5.8, 7.6), written compact: a
    sparse tensor with a sorted 256-value codebook, dense codes with a float16-exact codebook
    stored float32 by the caller, an unaligned zstd RAW tensor, then an aligned plain RAW one."""
    book = np.concatenate([[0.0], np.sort(rng.normal(0, 0.05, 255))]).astype(np.float32)
    positions, codes = _sparse_codes((40, 50), 0.3, 256, 5)
    return {
        "compact": (
            {
                "sparse": dcformat.Quantized(book, codes, (40, 50), positions=positions),
                "dense_f16_exact": dcformat.Quantized(
                    np.linspace(-1, 1, 17).astype(np.float32), rng.integers(0, 17, (9, 11)), (9, 11)
                ),
                "raw_zstd": dcformat.Raw(np.zeros(300, np.float32), zstd_level=3),
                "raw": np.arange(5, dtype=np.int16),
            },
            {"compact": True},
        ),
        # names and records that repeat: the header is stored as header_zstd (spec 3)
        "compact_header": (
            {
                f"features.block{i // 2}.conv.{('weight', 'bias')[i % 2]}": np.full(3 + i, i, np.float32)
                for i in range(12)
            },
            {"compact": True},
        ),
    }


def format_1_3_vectors(rng: np.random.Generator) -> dict[str, tuple[dict, dict]]:
    """RAW_NARROW (spec 5.9): the worked example (float32 as float16, past float16's range
    included), a float16 subnormal and signed zeros, float64 as bfloat16, a zstd-compressed
    one, and an empty one."""
    return {
        "raw_narrow": (
            {
                "example": dcformat.Narrow(np.array([1.0, -2.5, 0.0001, 70000.0], np.float32)),
                "specials": dcformat.Narrow(np.array([[2.0**-24, -0.0], [0.0, -65504.0]], np.float32)),
                "f64_bf16": dcformat.Narrow(np.array([np.pi, -1e30, 3e-39]), "bfloat16"),
                "zstd": dcformat.Narrow(np.repeat(rng.normal(size=8), 64).astype(np.float32), zstd_level=3),
                "empty": dcformat.Narrow(np.zeros((0, 3), np.float32)),
            },
            {"compact": True},
        )
    }


def coverage_vectors() -> dict[str, tuple[dict, dict]]:
    """Cases a reader must get right that the vectors above miss: special codebook values (NaN
    with a payload, -0.0, inf) through every float conversion, a float16 codebook in
    SPARSE_CODES, chunked gap streams, entries of code 0 where no filler is needed (zero entries
    the reader must place like any other)."""
    specials = np.array([0.0, np.nan, -0.0, np.inf, -np.inf, 1.0, -2.5, 3e-39], np.float32)
    specials[1:2].view(np.uint32)[0] = 0x7FA00001  # a signalling NaN with a payload
    codes = np.arange(16) % 8
    book16 = np.array([0.0, -0.0, 0.5, np.nan, 65504.0, 6e-8], np.float16)
    return {
        "special_values": (
            {
                f"to_{dtype}": dcformat.Quantized(specials, codes, (2, 8), dtype=dtype)
                for dtype in ("float32", "float16", "bfloat16", "float64")
            },
            {},
        ),
        "sparse_f16_book_chunked": (
            {
                "w": dcformat.Quantized(
                    book16,
                    [2, 1, 3, 4, 5, 2, 0, 0],
                    (50,),
                    positions=[0, 3, 4, 9, 20, 40, 41, 49],
                    index_bits=3,
                ),
            },
            {"chunk_size": 3},
        ),
    }


def format_1_1_vectors(rng: np.random.Generator) -> dict[str, tuple[dict, dict]]:
    """Scales and outliers (spec 5.6, 5.7), the worked examples among them."""
    book = np.concatenate([[0.0], np.linspace(-0.5, 0.5, 15)]).astype(np.float32)
    codes = rng.integers(0, 16, (6, 5))
    row_scales = np.array([1.0, 2.0, 0.5, 4.0, 3.0, 0.001], np.float16)
    positions, sparse_codes = _sparse_codes((6, 5), 0.4, 16, 3)
    out: dict[str, tuple[dict, dict]] = {}
    out["scales"] = (
        {
            "example_5_6": dcformat.Quantized(
                np.array([0.0, 0.5, -1.0], np.float32),
                [[1, 2], [0, 1], [2, 1]],
                (3, 2),
                scales=np.array([2.0, 0.1], np.float16),
                rows_per_scale=2,
            ),
            "rows_f16": dcformat.Quantized(book, codes, (6, 5), dtype="float16", scales=row_scales),
            "groups_bf16": dcformat.Quantized(
                book,
                codes,
                (6, 5),
                dtype="bfloat16",
                scales=np.array([3.0, 1e-3, 7.5], np.float32),
                rows_per_scale=2,
            ),
            "conv_f64": dcformat.Quantized(
                book.astype(np.float16),
                rng.integers(0, 16, (2, 3, 2)),
                (2, 3, 2),
                dtype="float64",
                scales=np.array([1e4, 3.0], np.float32),
            ),
            "sparse": dcformat.Quantized(book, sparse_codes, (6, 5), positions=positions, scales=row_scales),
            "empty_rows": dcformat.Quantized(
                book, np.zeros((4, 0), int), (4, 0), scales=np.ones(4, np.float16)
            ),
        },
        {},
    )
    special = np.array([np.nan, -0.0, np.inf, 55.0], np.float32)
    out["outliers"] = (
        {
            "example_5_7": dcformat.Quantized(
                book, np.zeros(400, int), (400,), dtype="float16", outliers=([1, 302], [55.0, -0.28])
            ),
            "dense_specials": dcformat.Quantized(book, codes, (6, 5), outliers=([0, 7, 8, 29], special)),
            "sparse_unstored": dcformat.Quantized(
                book,
                sparse_codes,
                (6, 5),
                positions=positions,
                dtype="bfloat16",
                outliers=([1, 2, 28], [9.0, -9.0, 1e30]),
            ),
            "scalar": dcformat.Quantized(book, [3], (), dtype="float64", outliers=([0], np.array([np.pi]))),
            "all_outliers": dcformat.Quantized(
                book, np.zeros(6, int), (2, 3), outliers=(np.arange(6), np.arange(6.0) - 2.5)
            ),
            "with_scales": dcformat.Quantized(
                book, codes, (6, 5), scales=row_scales, outliers=([4, 13], [-100.0, 100.0])
            ),
        },
        {},
    )
    many = np.flatnonzero(rng.random(4000) < 0.05)
    out["outliers_zstd"] = (
        {
            "w": dcformat.Quantized(
                book,
                rng.integers(0, 16, 4000),
                (40, 100),
                outliers=(many, np.round(rng.normal(0, 9, many.size))),
            )
        },
        {},
    )
    return out


# -- invalid vectors --------------------------------------------------------------------------


class Parsed:
    """A file taken apart: its header and the bytes of each section, to be put back together."""

    def __init__(self, data: bytes) -> None:
        _, self.major, self.minor, length, _, _ = PREAMBLE.unpack(data[:PREAMBLE_SIZE])
        start = align_up(PREAMBLE_SIZE + length)
        outer = pb.Header.FromString(data[PREAMBLE_SIZE : PREAMBLE_SIZE + length])
        self.header = inflate_header(outer, self.minor)  # rebuilt plain
        self.sections = {
            key: data[start + s.offset : start + s.offset + s.length] for key, s in self.all_sections()
        }
        self.aligned = {
            (i, "raw")
            for i, t in enumerate(self.header.tensors)
            if t.encoding == pb.RAW and t.compression == pb.COMPRESSION_NONE
        }

    def all_sections(self) -> list[tuple[tuple[int, str], pb.Section]]:
        """((tensor index, field), section) in file order."""
        found = []
        for i, t in enumerate(self.header.tensors):
            if t.HasField("raw"):
                found.append(((i, "raw"), t.raw))
            for stream in ("codes", "gaps"):
                if t.HasField(stream) and getattr(t, stream).HasField("data"):
                    found.append(((i, stream), getattr(t, stream).data))
            for field in ("positions", "values"):
                if t.HasField("outliers") and t.outliers.HasField(field):
                    found.append(((i, f"outliers.{field}"), getattr(t.outliers, field)))
        return found

    def data_of(self, tensor: pb.Tensor, field: str) -> bytes:
        return self.sections[(list(self.header.tensors).index(tensor), field)]

    def set_data(self, tensor: pb.Tensor, field: str, data: bytes) -> None:
        """Replace a section's bytes, keeping its checksum right."""
        self.sections[(list(self.header.tensors).index(tensor), field)] = data
        if field == "raw":
            section = tensor.raw
        elif field.startswith("outliers."):
            section = getattr(tensor.outliers, field.split(".")[1])
        else:
            section = getattr(tensor, field).data
        section.length = len(data)
        section.crc32 = zlib.crc32(data)

    def build(self, relayout: bool = True) -> bytes:
        data = bytearray()
        for key, s in self.all_sections():
            payload = self.sections.get(key, b"")
            if relayout:
                s.offset = align_up(len(data)) if self.minor < 2 or key in self.aligned else len(data)
            data += bytes(max(0, s.offset - len(data)))
            data[s.offset : s.offset + len(payload)] = payload
        header = self.header.SerializeToString(deterministic=True)
        return assemble(header, bytes(data), self.major, self.minor)


def assemble(header: bytes, data: bytes, major: int = 1, minor: int = 0) -> bytes:
    head = PREAMBLE.pack(MAGIC, major, minor, len(header), zlib.crc32(header), 0)
    head = head[:-4] + zlib.crc32(head[:-4]).to_bytes(4, "little")
    head += header
    return head + bytes(align_up(len(head)) - len(head)) + data


def _first(p: Parsed, name: str) -> pb.Tensor:
    return next(t for t in p.header.tensors if t.name == name)


def _flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


Mutation = Callable[[bytes], bytes]


def _header(base: str, edit: Callable[[Parsed], None]) -> tuple[str, Mutation]:
    def mutate(data: bytes) -> bytes:
        p = Parsed(data)
        edit(p)
        return p.build()

    return base, mutate


def _stream_bits(p: Parsed, tensor: str, stream: str, symbols: list[int], lengths: list[int]) -> None:
    """Replace a tensor's stream with these symbols coded under these lengths (any table)."""
    from dcformat.codec import huffman

    s = getattr(_first(p, tensor), stream)
    coded = huffman.encode(np.array(symbols), np.array(lengths, np.uint8), s.chunk_size or 4096)
    s.count = len(symbols)
    s.code_lengths = bytes(lengths)
    s.bit_length = coded.bit_length
    del s.chunk_offsets[:]
    s.chunk_offsets.extend(coded.offsets.tolist())
    p.set_data(_first(p, tensor), stream, coded.data.tobytes())


def invalid_vectors() -> dict[str, tuple[str, str, Mutation]]:
    """name -> (expected rule, valid vector it starts from, mutation)."""
    v: dict[str, tuple[str, str, Mutation]] = {}

    def add(name: str, rule: str, base_and_mutation: tuple[str, Mutation]) -> None:
        v[name] = (rule, *base_and_mutation)

    add("bad_magic", "magic", ("raw_dtypes", lambda d: _preamble_crc(b"PK\x03\x04" + d[4:])))
    add("text_mode_magic", "magic", ("raw_dtypes", lambda d: d.replace(b"\r\n", b"\n", 1)))
    add("truncated_preamble", "truncated", ("raw_dtypes", lambda d: d[:10]))
    add("truncated_header", "truncated", ("raw_dtypes", lambda d: d[:40]))
    add("truncated_data", "truncated", ("sparse_codes", lambda d: d[:-1]))
    add("preamble_crc", "preamble-crc", ("raw_dtypes", lambda d: _flip_bit(d, 10 * 8)))
    add("major_2", "version", _header("raw_dtypes", lambda p: setattr(p, "major", 2)))
    add("header_too_big", "header-size", ("raw_dtypes", _huge_header_length))
    add("header_crc", "header-crc", ("raw_dtypes", lambda d: _flip_bit(d, (PREAMBLE_SIZE + 3) * 8)))
    add("header_garbage", "header-parse", ("raw_dtypes", lambda d: assemble(b"\xff\xff\xff", b"")))
    add(
        "duplicate_name",
        "tensor-name",
        _header("dense_codes", lambda p: setattr(p.header.tensors[1], "name", "f32")),
    )
    add(
        "empty_name",
        "tensor-name",
        _header("dense_codes", lambda p: setattr(p.header.tensors[0], "name", "")),
    )
    add("rank_33", "shape", _header("raw_dtypes", lambda p: _set_shape(p, "empty", [1] * 32 + [0])))
    add("numel_overflow", "shape", _header("raw_dtypes", lambda p: _set_shape(p, "empty", [2**40, 2**40, 0])))
    add("unknown_dtype", "dtype", _header("raw_dtypes", lambda p: setattr(_first(p, "int8"), "dtype", 99)))
    add("int_coded", "dtype", _header("dense_codes", lambda p: setattr(_first(p, "f32"), "dtype", pb.INT32)))
    add(
        "unknown_encoding",
        "encoding",
        _header("raw_dtypes", lambda p: setattr(_first(p, "int8"), "encoding", 7)),
    )
    add(
        "unknown_compression",
        "encoding",
        _header("raw_zstd", lambda p: setattr(_first(p, "blocks"), "compression", 5)),
    )
    add("raw_with_codebook", "encoding", _header("raw_dtypes", _raw_with_codebook))
    add(
        "dense_with_gaps",
        "encoding",
        _header("dense_codes", lambda p: setattr(_first(p, "f32"), "index_bits", 4)),
    )
    add(
        "nonzeros_above_numel",
        "nonzeros",
        _header("raw_dtypes", lambda p: setattr(_first(p, "int8"), "nonzeros", 4)),
    )
    add(
        "nonzeros_wrong",
        "nonzeros",
        _header("sparse_codes", lambda p: setattr(_first(p, "fc"), "nonzeros", 1)),
    )
    add("expansion", "expansion", _header("sparse_fillers", lambda p: _set_shape(p, "b1", [10**7])))
    add("raw_size", "raw-size", _header("raw_dtypes", lambda p: _set_shape(p, "int32", [5])))
    add(
        "zstd_garbage",
        "zstd",
        _header(
            "raw_zstd", lambda p: p.set_data(_first(p, "blocks"), "raw", b"\x28\xb5\x2f\xfd" + bytes(20))
        ),
    )
    add("zstd_wrong_size", "zstd", _header("raw_zstd", _zstd_wrong_size))
    add(
        "codebook_empty",
        "codebook",
        _header("dense_codes", lambda p: setattr(_first(p, "f32").codebook, "values", b"")),
    )
    add(
        "codebook_int",
        "codebook",
        _header("dense_codes", lambda p: setattr(_first(p, "f32").codebook, "dtype", pb.INT32)),
    )
    add(
        "codebook_65537",
        "codebook",
        _header("dense_codes", lambda p: setattr(_first(p, "f16_book").codebook, "values", bytes(2 * 65537))),
    )
    add(
        "padding_zero",
        "padding-zero",
        ("sparse_codes", _nonzeros_as_decoded(_nonzero_padding_symbol, "fc", "padding-zero")),
    )
    add(
        "index_bits_0",
        "index-bits",
        _header("sparse_codes", lambda p: _first(p, "fc").ClearField("index_bits")),
    )
    add(
        "index_bits_17",
        "index-bits",
        _header("sparse_codes", lambda p: setattr(_first(p, "fc"), "index_bits", 17)),
    )
    add("dense_count", "counts", _header("dense_codes", _dense_count))
    add("sparse_counts_differ", "counts", _header("sparse_codes", _counts_differ))
    add(
        "oversubscribed",
        "huffman-table",
        _header("dense_codes", lambda p: _set_lengths(p, "f32", "codes", [4] * 15 + [3])),
    )
    add(
        "incomplete",
        "huffman-table",
        _header("dense_codes", lambda p: _recode(p, "f32", [4] * 15 + [5])),
    )
    add(
        "length_17",
        "huffman-table",
        _header("dense_codes", lambda p: _recode(p, "f32", [4] * 14 + [5, 17])),
    )
    add(
        "one_symbol_length_2",
        "huffman-table",
        _header("one_symbol", lambda p: _recode(p, "dense_constant", [2])),
    )
    add(
        "alphabet_not_k",
        "huffman-table",
        # a 17th length, 0: the table still codes the stream as it is
        _header("dense_codes", _one_length_more),
    )
    add(
        "chunk_size_0",
        "huffman-chunks",
        _header("chunked", lambda p: setattr(_first(p, "stream").codes, "chunk_size", 0)),
    )
    add("chunk_offsets_order", "huffman-chunks", _header("chunked", _swap_offsets))
    add(
        "chunk_offsets_count",
        "huffman-chunks",
        _header("chunked", lambda p: _first(p, "stream").codes.chunk_offsets.pop()),
    )
    add("bit_length_short", "huffman-data", _header("dense_codes", _short_bit_length))
    add("chunk_end_mismatch", "huffman-data", _header("chunked", _shift_chunk_offset))
    add("padding_bits", "huffman-data", _header("dense_codes", _dirty_padding_bits))
    add("one_symbol_bit_set", "huffman-data", _header("one_symbol", _one_symbol_bit_set))
    add("positions_past_end", "positions", _header("sparse_fillers", _gaps_past_end))
    add("section_misaligned", "section-layout", ("sparse_codes", _misalign))
    add("section_crc", "section-crc", _header("sparse_codes", _wrong_section_crc))
    add("trailing_bytes", "file-size", ("sparse_codes", lambda d: d + b"\x00"))
    add("dirty_padding", "padding", ("raw_dtypes", _dirty_header_padding))
    # Found by fuzzing (fuzz/README.md): each crashed the reader or was read as valid.
    add("empty_huge_dim", "shape", _header("raw_dtypes", lambda p: _set_shape(p, "empty", [0, 2**63])))
    add("bool_value_2", "bool-value", _header("raw_dtypes", _bool_value_2))
    add("zstd_trailing_bytes", "zstd", _header("raw_zstd", lambda p: _extend_zstd(p, b"junk")))
    add("zstd_two_frames", "zstd", _header("raw_zstd", lambda p: _extend_zstd(p, None)))
    add("chunk_offset_bound", "huffman-chunks", _header("chunked", _offset_past_bound))
    _add_1_1(add)
    _add_1_2(add)
    _add_1_3(add)
    add("source_zstd_in_minor_0", "version", _header("source_zstd", lambda p: setattr(p, "minor", 0)))
    add(
        "source_both_skeletons",
        "source",
        _header("source_zstd", lambda p: setattr(p.header.source, "skeleton", b"x")),
    )
    add("source_zstd_damaged", "source", _header("source_zstd", _damage_skeleton_frame))
    add("one_symbol_chunk_offsets", "huffman-chunks", _header("one_symbol", _one_symbol_offsets))
    return v


def _add_1_3(add: Callable[..., None]) -> None:
    """RAW_NARROW's rules (spec 5.9, 10, 11)."""
    add("narrow_in_minor_2", "version", _header("raw_narrow", lambda p: setattr(p, "minor", 2)))
    add(
        "narrow_int_dtype",
        "dtype",
        _header("raw_narrow", lambda p: setattr(_first(p, "example"), "dtype", pb.INT16)),
    )
    add(
        "narrow_stored_float32",
        "dtype",
        _header("raw_narrow", lambda p: setattr(_first(p, "example"), "stored_dtype", pb.FLOAT32)),
    )
    add("narrow_raw_size", "raw-size", _header("raw_narrow", lambda p: _set_shape(p, "example", [2, 4])))
    add(
        "raw_with_stored_dtype",
        "encoding",
        _header("raw_dtypes", lambda p: setattr(_first(p, "float32"), "stored_dtype", pb.FLOAT16)),
    )
    add(
        "coded_with_stored_dtype",
        "encoding",
        _header("dense_codes", lambda p: setattr(_first(p, "f32"), "stored_dtype", pb.FLOAT16)),
    )


def _preamble_crc(data: bytes) -> bytes:
    """The file with its preamble checksum made right for the preamble's bytes as they are."""
    crc = zlib.crc32(data[: PREAMBLE_SIZE - 4]).to_bytes(4, "little")
    return data[: PREAMBLE_SIZE - 4] + crc + data[PREAMBLE_SIZE:]


def _wrong_section_crc(p: Parsed) -> None:
    """The last section's stored checksum off by one bit; its bytes intact."""
    p.all_sections()[-1][1].crc32 ^= 1


def _recode(p: Parsed, name: str, lengths: list[int]) -> None:
    """The tensor's codes stream recoded under these code lengths (its symbols unchanged)."""
    from dcformat.codec import decode
    from dcformat.codec.huffman import Stream

    s = _first(p, name).codes
    stream = Stream(
        data=np.frombuffer(p.data_of(_first(p, name), "codes"), np.uint8),
        bit_length=s.bit_length,
        count=s.count,
        lengths=np.frombuffer(s.code_lengths, np.uint8),
        chunk_size=s.chunk_size,
        offsets=np.asarray(s.chunk_offsets, dtype=np.uint64),
        origin=0,
    )
    _stream_bits(p, name, "codes", decode.decode_symbols(stream).tolist(), lengths)


def _nonzeros_as_decoded(edit: Callable[[Parsed], None], name: str, rule: str) -> Mutation:
    """The header edit, then the tensor's ``nonzeros`` set to what its data decodes to (read with
    the edit's rule waived), so that only the edited rule breaks."""

    def mutate(data: bytes) -> bytes:
        import tempfile

        from dcformat.errors import waiving

        p = Parsed(data)
        edit(p)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "v.dcnn"
            path.write_bytes(p.build())
            with waiving({rule}), dcformat.safe_open(path, verify=False) as f:
                values = f.get_tensor(name)
        _first(p, name).nonzeros = int(np.count_nonzero(values))
        return p.build()

    return mutate


def _huge_header_length(data: bytes) -> bytes:
    head = PREAMBLE.pack(MAGIC, 1, 0, (64 << 20) + 1, 0, 0)
    head = head[:-4] + zlib.crc32(head[:-4]).to_bytes(4, "little")
    return head + data[PREAMBLE_SIZE:]


def _set_shape(p: Parsed, name: str, shape: list[int]) -> None:
    t = _first(p, name)
    del t.shape[:]
    t.shape.extend(shape)


def _raw_with_codebook(p: Parsed) -> None:
    t = _first(p, "int8")
    t.codebook.dtype = pb.FLOAT32
    t.codebook.values = bytes(4)


def _zstd_wrong_size(p: Parsed) -> None:
    import zstandard

    t = _first(p, "blocks")
    p.set_data(t, "raw", zstandard.ZstdCompressor(level=1).compress(bytes(64 * 64 * 4 - 4)))


def _nonzero_padding_symbol(p: Parsed) -> None:
    t = _first(p, "fc")
    t.codebook.values = np.float32(1.0).tobytes() + t.codebook.values[4:]


def _dense_count(p: Parsed) -> None:
    _set_shape(p, "to_f64", [71])
    _first(p, "to_f64").nonzeros = 71


def _counts_differ(p: Parsed) -> None:
    t = _first(p, "fc")
    t.gaps.count -= 1


def _set_lengths(p: Parsed, name: str, stream: str, lengths: list[int]) -> None:
    getattr(_first(p, name), stream).code_lengths = bytes(lengths)


def _one_length_more(p: Parsed) -> None:
    s = _first(p, "f32").codes
    s.code_lengths += b"\0"


def _swap_offsets(p: Parsed) -> None:
    offsets = _first(p, "stream").codes.chunk_offsets
    offsets[0], offsets[1] = offsets[1], offsets[0]


def _short_bit_length(p: Parsed) -> None:
    s = _first(p, "f32").codes
    s.bit_length = s.count - 1  # below count * min_len


def _shift_chunk_offset(p: Parsed) -> None:
    s = _first(p, "stream").codes
    s.chunk_offsets[3] += 1


def _dirty_padding_bits(p: Parsed) -> None:
    t = _first(p, "f32")
    data = bytearray(p.data_of(t, "codes"))
    if t.codes.bit_length % 8 == 0:  # make room for a padding bit
        raise AssertionError("vector needs a stream whose bit length is not a multiple of 8")
    data[-1] |= 0x80
    p.set_data(t, "codes", bytes(data))


def _one_symbol_bit_set(p: Parsed) -> None:
    t = _first(p, "dense_constant")
    data = bytearray(p.data_of(t, "codes"))
    data[0] |= 1
    p.set_data(t, "codes", bytes(data))


def _gaps_past_end(p: Parsed) -> None:
    # b1 has index_bits 1 over 100 elements: 71 entries of gap 1 cover 142 positions.
    count = 71
    _stream_bits(p, "b1", "gaps", [1] * count, [1, 1])
    _stream_bits(p, "b1", "codes", [0] * count, [1] + [0] * 31)


def _bool_value_2(p: Parsed) -> None:
    t = _first(p, "bool")
    data = bytearray(p.data_of(t, "raw"))
    data[0] = 2  # was True (1): still nonzero, so only the value rule breaks
    p.set_data(t, "raw", bytes(data))


def _extend_zstd(p: Parsed, extra: bytes | None) -> None:
    """Append bytes, or (None) a second copy of the frame, to the zstd section."""
    t = _first(p, "blocks")
    frame = p.data_of(t, "raw")
    p.set_data(t, "raw", frame + (frame if extra is None else extra))


def _one_symbol_offsets(p: Parsed) -> None:
    s = _first(p, "dense_constant").codes  # 50 one-bit symbols: chunks of 16 start at 16, 32, 48
    s.chunk_size = 16
    s.chunk_offsets.extend([16, 33, 48])


def _misalign(data: bytes) -> bytes:
    p = Parsed(data)
    p.build()  # lay the sections out, then push the last one off its aligned offset
    p.all_sections()[-1][1].offset += 8
    return p.build(relayout=False)


def _dirty_header_padding(data: bytes) -> bytes:
    _, _, _, length, _, _ = PREAMBLE.unpack(data[:PREAMBLE_SIZE])
    pad = PREAMBLE_SIZE + length
    if pad == align_up(pad):
        raise AssertionError("vector needs header padding")
    return data[:pad] + b"\x01" + data[pad + 1 :]


def _offset_past_bound(p: Parsed) -> None:
    """Offset 1 one bit past 7 symbols of the longest code: still in order and in range."""
    s = _first(p, "stream").codes
    longest = max(s.code_lengths)
    s.chunk_offsets[0] = s.chunk_size * longest + 1
    assert s.chunk_offsets[0] < s.chunk_offsets[1], "vector needs room before chunk 2"


def _damage_skeleton_frame(p: Parsed) -> None:
    """The frame header intact (size declared), its last block's bytes garbled."""
    frame = bytearray(p.header.source.skeleton_zstd)
    frame[-6:] = b"\xff" * 6
    p.header.source.skeleton_zstd = bytes(frame)


def _add_1_1(add: Callable[[str, str, tuple[str, Mutation]], None]) -> None:
    """Invalid vectors of the 1.1 rules (spec 5.6, 5.7, 10)."""
    add("ext_in_minor_0", "version", _header("scales", lambda p: setattr(p, "minor", 0)))
    add("newer_minor_unknown_encoding", "version", _header("scales", _newer_minor))
    add(
        "ext_without_extras",
        "encoding",
        _header("scales", lambda p: _first(p, "rows_f16").ClearField("scales")),
    )
    add(
        "dense_with_scales",
        "encoding",
        _header("scales", lambda p: setattr(_first(p, "rows_f16"), "encoding", pb.DENSE_CODES)),
    )
    add("scales_count", "scales", _header("scales", lambda p: _edit_scales(p, lambda v: v[:-2])))
    add(
        "scales_zero",
        "scales",
        (
            "scales",
            _nonzeros_as_decoded(
                lambda p: _edit_scales(p, lambda v: v[:-2] + bytes(2)), "rows_f16", "scales"
            ),
        ),
    )
    add(
        "scales_rows_0",
        "scales",
        _header("scales", lambda p: setattr(_first(p, "rows_f16").scales, "rows_per_scale", 0)),
    )
    add(
        "scales_dtype",
        "scales",
        _header("scales", lambda p: setattr(_first(p, "rows_f16").scales, "dtype", pb.BFLOAT16)),
    )
    add(
        "outliers_count_0",
        "outliers",
        _header("outliers", lambda p: setattr(_first(p, "dense_specials").outliers, "count", 0)),
    )
    add("outliers_values_size", "outliers", _header("outliers", _short_outlier_values))
    add("outliers_varint_not_minimal", "outliers", _header("outliers", _non_minimal_varint))
    add("outliers_past_end", "outliers", _header("outliers", _outlier_past_end))
    add("outliers_zstd_size", "outliers", _header("outliers_zstd", _outlier_zstd_size))


def _add_1_2(add: Callable[[str, str, tuple[str, Mutation]], None]) -> None:
    """Invalid vectors of the 1.2 rules (spec 4, 5.8, 7.6, 10)."""
    add("packed_in_minor_1", "version", _header("compact", lambda p: setattr(p, "minor", 1)))
    add("unpadded_in_minor_1", "section-layout", ("sparse_codes", _unpadded_in_minor_1))
    add("padded_in_minor_2", "section-layout", ("sparse_codes", _padded_in_minor_2))
    add(
        "packed_table_and_plain",
        "huffman-table",
        _header("compact", lambda p: setattr(_first(p, "sparse").codes, "code_lengths", bytes(256))),
    )
    add(
        "packed_table_trailing_byte",
        "huffman-table",
        _header("compact", lambda p: _edit_packed_table(p, lambda b: b + bytes(1))),
    )
    add(
        "packed_table_incomplete",
        "huffman-table",
        # one symbol, lengths (2, 2): an incomplete code
        _header("compact", lambda p: _edit_packed_table(p, lambda b: bytes([1, 1, 2, 0x12, 0]))),
    )
    add(
        "packed_codebook_trailing_byte",
        "codebook",
        _header("compact", lambda p: _edit_packed_book(p, lambda b: b + bytes(1))),
    )
    add(
        "packed_codebook_range",
        "codebook",
        # one value of bucket 32 (the only symbol, length 1), extra bits all ones: key 2^31 + 2^32 - 1
        _header(
            "compact",
            lambda p: _edit_packed_book(
                p, lambda b: bytes([1, 1, 33]) + bytes(12) + b"\x01\x00\xff\xff\xff\x7f"
            ),
        ),
    )
    add(
        "packed_codebook_negate_last",
        "codebook",
        # the codebook's stream ends with the negation escape (33) instead of a delta after it
        _header("compact", lambda p: _edit_packed_book(p, lambda b: _book_ending_in_escape())),
    )
    add("header_zstd_in_minor_1", "version", ("compact", _compressed(_zstd, minor=1)))
    add("header_zstd_and_fields", "header-parse", ("compact", _compressed(_zstd, producer="x")))
    add("header_zstd_nested", "header-parse", ("compact", _compressed(lambda h: _zstd(_wrap(_zstd(h))))))
    add("header_zstd_trailing_byte", "header-parse", ("compact", _compressed(lambda h: _zstd(h) + b"\0")))
    add("header_zstd_no_content_size", "header-size", ("compact", _compressed(lambda h: _zstd(h, False))))
    add("header_zstd_no_sections", "header-parse", ("compact", _compressed(_no_tensors, data=b"")))


def _zstd(header: bytes, content_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=19, write_content_size=content_size).compress(header)


def _no_tensors(header: bytes) -> bytes:
    """The frame of the header with its tensors removed (a file with no section)."""
    plain = pb.Header.FromString(header)
    plain.ClearField("tensors")
    return _zstd(plain.SerializeToString(deterministic=True))


def _wrap(frame: bytes) -> bytes:
    return pb.Header(header_zstd=frame).SerializeToString()


def _compressed(
    frame_of: Callable[[bytes], bytes], minor: int = 2, producer: str = "", data: bytes | None = None
) -> Mutation:
    """The file with its header (rebuilt plain) stored as ``header_zstd = frame_of(header)``
    (spec 3), other outer fields and the version as given; ``data`` replaces the data area."""

    def mutate(file: bytes) -> bytes:
        parsed = Parsed(file)
        parsed.minor = minor  # sections laid out as the declared version lays them
        plain = parsed.build()
        length = PREAMBLE.unpack(plain[:PREAMBLE_SIZE])[3]
        outer = pb.Header(
            header_zstd=frame_of(plain[PREAMBLE_SIZE : PREAMBLE_SIZE + length]), producer=producer
        )
        area = plain[align_up(PREAMBLE_SIZE + length) :] if data is None else data
        return assemble(outer.SerializeToString(deterministic=True), area, 1, minor)

    return mutate


def _book_ending_in_escape() -> bytes:
    """A packed codebook stream of two symbols, a 1-bit delta then the escape (33): lengths 1, 1."""
    lengths = np.zeros(34 * 3, np.uint8)
    lengths[3] = lengths[99] = 1  # symbol 1 and symbol 33: code length 1 each
    table = np.packbits(lengths, bitorder="little").tobytes()
    return bytes([2, 2, 34]) + table + b"\x02"  # symbol 1 = 0, symbol 33 = 1: bits 0 1


def _padded_in_minor_2(data: bytes) -> bytes:
    p = Parsed(data)
    p.minor = 2
    return p.build(relayout=False)


def _unpadded_in_minor_1(data: bytes) -> bytes:
    p = Parsed(data)
    p.minor, p.aligned = 2, set()
    relaid = Parsed(p.build())
    relaid.minor = 1
    return relaid.build(relayout=False)


def _edit_packed_table(p: Parsed, edit: Callable[[bytes], bytes]) -> None:
    stream = _first(p, "sparse").codes
    stream.code_lengths_packed = edit(stream.code_lengths_packed)


def _edit_packed_book(p: Parsed, edit: Callable[[bytes], bytes]) -> None:
    book = _first(p, "sparse").codebook
    book.values_packed = edit(book.values_packed)


def _newer_minor(p: Parsed) -> None:
    p.minor = 4
    _first(p, "rows_f16").encoding = 7


def _edit_scales(p: Parsed, edit: Callable[[bytes], bytes]) -> None:
    scales = _first(p, "rows_f16").scales
    scales.values = edit(scales.values)


def _short_outlier_values(p: Parsed) -> None:
    t = _first(p, "dense_specials")
    p.set_data(t, "outliers.values", p.data_of(t, "outliers.values")[:-4])


def _non_minimal_varint(p: Parsed) -> None:
    t = _first(p, "dense_specials")  # gaps 0, 6, 0, 20: the gap 6 as two bytes 86 00
    data = p.data_of(t, "outliers.positions")
    assert data == bytes([0, 6, 0, 20]), data
    p.set_data(t, "outliers.positions", bytes([0, 0x86, 0, 0, 20]))


def _outlier_past_end(p: Parsed) -> None:
    t = _first(p, "dense_specials")  # the last gap 20 -> 21 puts position 29 at 30 = numel
    p.set_data(t, "outliers.positions", bytes([0, 6, 0, 21]))


def _outlier_zstd_size(p: Parsed) -> None:
    import zstandard

    t = _first(p, "w")
    values = zstandard.ZstdDecompressor().decompress(p.data_of(t, "outliers.values"))
    p.set_data(t, "outliers.values", zstandard.ZstdCompressor(level=3).compress(values[:-4]))


# -- generation -------------------------------------------------------------------------------


def _unknown_fields(data: bytes) -> bytes:
    """A file of a later minor version: unknown fields (number 99) in the header and a tensor,
    which a reader ignores (spec 10)."""
    p = Parsed(data)
    p.minor = 1
    unknown = b"\x98\x06\x01"  # field 99, varint 1
    tensor = p.header.tensors[0]
    tensor.CopyFrom(pb.Tensor.FromString(tensor.SerializeToString(deterministic=True) + unknown))
    rebuilt = p.build()
    _, major, minor, length, _, _ = PREAMBLE.unpack(rebuilt[:PREAMBLE_SIZE])
    header = rebuilt[PREAMBLE_SIZE : PREAMBLE_SIZE + length] + unknown
    return assemble(header, rebuilt[align_up(PREAMBLE_SIZE + length) :], major, minor)


# name -> rewrite of the writer's file, for valid vectors the reference writer does not produce
REWRITES: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "unknown_fields": ("metadata_source", _unknown_fields)
}


def write_valid(out: Path) -> dict[str, bytes]:
    files = {}
    for name, (tensors, options) in valid_vectors().items():
        path = out / f"{name}.dcnn"
        with dcformat.Writer(path, producer=PRODUCER, **{"compact": False, **options}) as w:
            for tname, t in tensors.items():
                w.add(tname, t)
        expected = dcformat.load_file(path)
        np.savez(out / f"{name}.npz", **expected)
        files[name] = path.read_bytes()
    for name, (base, rewrite) in REWRITES.items():
        path = out / f"{name}.dcnn"
        path.write_bytes(rewrite(files[base]))
        np.savez(out / f"{name}.npz", **dcformat.load_file(path))
        files[name] = path.read_bytes()
    return files


# Invalid vectors whose rule cannot be broken alone: name -> the rules that breaking it implies,
# which the validator reports once every check of the vector's rule is off (spec 12).
IMPLIED: dict[str, tuple[str, ...]] = {
    # text-mode damage drops a byte of the magic: every field after it moves
    "text_mode_magic": ("preamble-crc",),
    # no prefix code exists for an over-subscribed table: its stream cannot decode
    "oversubscribed": ("huffman-data",),
    # a one-symbol stream is one zero bit per symbol (7.1): its table cannot say 2
    "one_symbol_length_2": ("huffman-data",),
    # the offsets restate where chunks end in the data: wrong ones break a chunk end
    "chunk_offsets_order": ("huffman-data",),
    "chunk_offsets_count": ("huffman-data",),
    "chunk_offset_bound": ("huffman-data",),
}


def write_invalid(out: Path, valid: dict[str, bytes]) -> None:
    (out / "invalid").mkdir(exist_ok=True)
    for name, (rule, base, mutate) in invalid_vectors().items():
        (out / "invalid" / f"{name}.dcnn").write_bytes(mutate(valid[base]))
        lines = [rule] + ([f"implied: {' '.join(IMPLIED[name])}"] if name in IMPLIED else [])
        (out / "invalid" / f"{name}.expected").write_text("".join(f"{line}\n" for line in lines))


def main(argv: list[str]) -> None:
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).parent
    out.mkdir(parents=True, exist_ok=True)
    write_invalid(out, write_valid(out))


if __name__ == "__main__":
    main(sys.argv)
