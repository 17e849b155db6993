"""Packed tables and codebooks and the compact writer (format 1.2, spec 4, 5.8, 7.6)."""

import numpy as np
import pytest

import dcformat
from dcformat.codec import decode, packed
from dcformat.errors import FormatError, LimitError
from dcformat.file import header
from dcformat.layout import PREAMBLE, PREAMBLE_SIZE


def test_worked_examples_byte_for_byte():
    table = packed.pack_table(np.array([3, 1, 3, 3, 3], np.uint8))
    assert table.hex(" ") == "05 0a 10 10 24 00 00 00 40 2d 00"
    book = packed.pack_codebook(np.array([0.0, 0.5, -1.0], np.float32))
    # spec 5.8: symbols 0, 30, 33 (negate), 31; extra bits 0x1F000000 (29) then 0x3E800001 (30)
    assert book.hex(" ") == "04 08 22 02" + " 00" * 10 + " 48 10 78 00 00 00 3f 00 00 d0 07"


@pytest.mark.parametrize("seed", range(20))
def test_round_trips(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 5000))
    lengths = np.where(rng.random(size) < rng.random(), 0, rng.integers(1, 17, size)).astype(np.uint8)
    assert np.array_equal(packed.unpack_table(packed.pack_table(lengths), "huffman-table"), lengths)
    bits = rng.integers(0, 2**32, int(rng.integers(1, 400)), dtype=np.uint64).astype(np.uint32)
    assert (
        packed.unpack_codebook(packed.pack_codebook(bits.view(np.float32)), 4, "codebook") == bits.tobytes()
    )
    half = rng.integers(0, 2**16, int(rng.integers(1, 400))).astype(np.uint16)
    assert (
        packed.unpack_codebook(packed.pack_codebook(half.view(np.float16)), 2, "codebook") == half.tobytes()
    )


def test_large_sparse_table_packs_small():
    lengths = np.zeros(1 << 16, np.uint8)
    lengths[[5, 60000]] = 1
    data = packed.pack_table(lengths)
    assert len(data) < 40
    assert np.array_equal(packed.unpack_table(data, "huffman-table"), lengths)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes([0, 0, 1, 0]),  # zero symbols
        bytes([0x80, 0x00, 1, 1]),  # varint not minimal
        bytes([1, 1, 2, 0x12, 0]),  # lengths (2, 2): incomplete
        bytes([1, 1, 1, 1, 0, 0]),  # a byte after the table
        bytes([1, 1, 1, 1, 2]),  # a padding bit set
        bytes([1, 2, 33] + [0] * 12 + [0x01, 0]),  # bit_length 2 for one 1-bit symbol
        bytes([2, 2, 33] + [0] * 12 + [0x01, 0]),  # 2 x 2^16 unused: over the 65536 limit
        bytes([2, 2, 18, 0, 0, 0, 0, 0, 0, 0x40, 0]),  # a length field past the 18 listed
    ],
)
def test_broken_tables_raise_the_rule(data):
    with pytest.raises(FormatError) as info:
        packed.unpack_table(data, "huffman-table")
    assert info.value.rule == "huffman-table"


def test_a_run_of_65536_unused_symbols_is_one_symbol():
    out = packed.unpack_table(bytes([1, 1, 33] + [0] * 12 + [0x01, 0]), "huffman-table")
    assert out.size == 1 << 16 and not out.any()


def _book_stream(symbols: list[int], extra: bytes) -> bytes:
    """A packed codebook whose mini stream codes ``symbols`` (two distinct, 1 bit each)."""
    a, b = sorted(set(symbols))
    fields = np.zeros(34 * 3, np.uint8)
    fields[3 * a] = fields[3 * b] = 1
    bits = sum((s == b) << i for i, s in enumerate(symbols))
    head = bytes([len(symbols), len(symbols), 34]) + np.packbits(fields, bitorder="little").tobytes()
    return head + bytes([bits]) + extra


@pytest.mark.parametrize(
    "data",
    [
        _book_stream([1, 33], b""),  # ends with the negation escape
        _book_stream([33, 0], b""),  # negates a zero delta
        _book_stream([33, 33, 1], b""),  # negates the escape
        _book_stream([1, 32], b"\xff\xff\xff\x7f"),  # key 2^31 + 1 + 2^32 - 1: past the range
        _book_stream([1, 32], b"\xff\xff\xff\xff"),  # a padding bit set
        _book_stream([1, 32], b"\xff\xff\xff"),  # extra bits cut short
    ],
)
def test_broken_codebooks_raise_the_rule(data):
    with pytest.raises(FormatError) as info:
        packed.unpack_codebook(data, 4, "codebook")
    assert info.value.rule == "codebook"


def test_negative_deltas_use_the_escape():
    book = np.array([0.0, -0.25, 0.5, -1.0], np.float32)
    data = packed.pack_codebook(book)
    assert np.frombuffer(packed.unpack_codebook(data, 4, "codebook"), np.float32).tolist() == book.tolist()
    assert data[0] == 4 + 2  # count: two negative deltas, each after an escape
    assert packed.pack_codebook(np.sort(book))[0] == 4 + 1  # sorted: only the first delta is negative


def test_compact_writer_reads_back_the_same(tmp_path):
    rng = np.random.default_rng(0)
    book = np.concatenate([[0.0], np.sort(rng.normal(0, 0.05, 255))]).astype(np.float32)
    positions = np.sort(rng.choice(4000, 1200, replace=False))
    tensors = {
        "sparse": dcformat.Quantized(book, rng.integers(1, 256, 1200), (40, 100), positions=positions),
        "dense": dcformat.Quantized(
            np.linspace(-1, 1, 9).astype(np.float32), rng.integers(0, 9, (7, 3)), (7, 3)
        ),
        "bias": rng.normal(size=13).astype(np.float32),
    }
    for compact in (False, True):
        dcformat.save_file(tensors, tmp_path / f"{compact}.dcnn", compact=compact)
    plain, small = tmp_path / "False.dcnn", tmp_path / "True.dcnn"
    assert small.stat().st_size < plain.stat().st_size
    a, b = dcformat.load_file(plain), dcformat.load_file(small)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    with dcformat.safe_open(small) as f:
        assert f.version == (1, 2)
        assert f.get_codes("dense").codebook.dtype == np.float16  # exact, so stored half width
    assert dcformat.validate(small).ok


def test_packed_tables_of_a_file_expand_to_at_most_2_to_26(tmp_path):
    """The file-wide limit (spec 9) counts every packed table expanded so far."""
    rng = np.random.default_rng(1)
    book = np.concatenate([[0.0], np.sort(rng.normal(0, 0.05, 255))]).astype(np.float32)
    dcformat.save_file(
        {"w": dcformat.Quantized(book, rng.integers(0, 256, 3000), (3000,))}, tmp_path / "w.dcnn"
    )
    data = (tmp_path / "w.dcnn").read_bytes()
    length = PREAMBLE.unpack(data[:PREAMBLE_SIZE])[3]
    stored = dcformat.dcnn_pb2.Header.FromString(data[PREAMBLE_SIZE : PREAMBLE_SIZE + length])
    record = header.inflate_header(stored, 2).tensors[0]
    assert record.codes.code_lengths_packed and not record.codes.code_lengths
    for before, fits in ((0, True), ((1 << 26) - 256, True), ((1 << 26) - 255, False)):
        copy = dcformat.dcnn_pb2.Tensor()
        copy.CopyFrom(record)
        expanded = [before]
        if fits:
            header.check_tensor(copy, 2, expanded)
            assert expanded == [before + 256]
        else:
            with pytest.raises(LimitError) as info:
                header.check_tensor(copy, 2, expanded)
            assert info.value.rule == "huffman-table"


needs_native = pytest.mark.skipif(not decode.AVAILABLE, reason="native extension not built")


def _numpy_unpack(data: bytes, itemsize: int, monkeypatch) -> bytes | None:
    """What the numpy path gives: the bytes, or None where it raises."""
    with monkeypatch.context() as m:
        m.setenv("DCNN_NO_NATIVE", "1")
        try:
            if itemsize:
                return packed.unpack_codebook(data, itemsize, "codebook")
            return packed.unpack_table(data, "huffman-table").tobytes()
        except FormatError:
            return None


@needs_native
@pytest.mark.parametrize("seed", range(6))
def test_native_unpack_agrees_with_numpy_on_mutated_input(seed, monkeypatch):
    """The native fast path accepts exactly what the numpy code accepts, with the same result,
    on valid tables and codebooks and on copies with bytes changed, cut or added."""
    rng = np.random.default_rng(seed)
    lengths = np.where(rng.random(300) < 0.5, 0, rng.integers(1, 17, 300)).astype(np.uint8)
    book = np.sort(rng.normal(0, 0.1, 40)).astype(np.float32)
    cases = [
        (packed.pack_table(lengths), 0),
        (packed.pack_codebook(book), 4),
        (packed.pack_codebook(book.astype(np.float16)), 2),
    ]
    for data, itemsize in cases:
        variants = [data, data[:-1], data + b"\0", data[1:]]
        for _ in range(60):
            broken = bytearray(data)
            at = int(rng.integers(len(broken)))
            broken[at] ^= 1 << int(rng.integers(8))
            variants.append(bytes(broken))
        results = [_numpy_unpack(v, itemsize, monkeypatch) for v in variants]
        assert [decode._native.unpack(v, itemsize) for v in variants] == results
        assert results[0] is not None and None in results  # both outcomes are exercised


@needs_native
def test_native_unpack_refuses_the_broken_examples():
    tables = test_broken_tables_raise_the_rule.pytestmark[0].args[1]
    books = test_broken_codebooks_raise_the_rule.pytestmark[0].args[1]
    assert all(decode._native.unpack(d, 0) is None for d in tables)
    assert all(decode._native.unpack(d, 4) is None for d in books)
