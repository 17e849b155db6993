"""The native decoder against the numpy decoder (and the truth) on the same inputs, corrupt ones included."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dcformat
from dcformat import dcnn_pb2 as pb
from dcformat.codec import decode as codec
from dcformat.codec import huffman
from dcformat.codec.huffman import Stream
from dcformat.layout import PREAMBLE, PREAMBLE_SIZE, align_up

NATIVE_WANTED = os.environ.get("DCNN_NO_NATIVE", "") in ("", "0")
PATHS = ["numpy", "native"] if NATIVE_WANTED else ["numpy"]


def test_native_extension_is_built() -> None:
    # The package build compiles it; set DCNN_NO_NATIVE=1 to run the suite on the numpy path alone.
    assert codec.AVAILABLE or not NATIVE_WANTED
    assert codec.enabled() == NATIVE_WANTED


@pytest.fixture
def path_mode(monkeypatch: pytest.MonkeyPatch):
    """Call ``run(path, fn)`` to evaluate fn() with the numpy or the native decoder."""

    def run(path: str, fn):
        with monkeypatch.context() as m:
            m.setenv("DCNN_NO_NATIVE", "1" if path == "numpy" else "0")
            assert codec.enabled() == (path == "native")
            return fn()

    return run


def outcome(fn):
    """The result of fn(), or the error it raised, in a comparable form."""
    try:
        result = fn()
    except dcformat.DcnnError as exc:
        return ("error", type(exc).__name__, exc.rule, exc.message, exc.offset)
    return ("ok", result)


def assert_same(a, b) -> None:
    assert a[0] == b[0], (a if a[0] == "error" else "ok", b if b[0] == "error" else "ok")
    if a[0] == "error":
        assert a == b
        return
    left, right = a[1], b[1]
    left, right = (left, right) if isinstance(left, tuple) else ((left,), (right,))
    for x, y in zip(left, right, strict=True):
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8))
        else:
            assert x == y


def make_stream(symbols: np.ndarray, freqs: np.ndarray, chunk_size: int, origin: int = 0) -> Stream:
    return dataclasses.replace(
        huffman.encode(symbols, huffman.code_lengths(freqs), chunk_size), origin=origin
    )


def skewed_symbols(rng: np.random.Generator, alphabet: int, count: int, skew: float) -> np.ndarray:
    """Symbols with geometric-like frequencies, so code lengths spread up to 16 bits."""
    weights = np.exp(-skew * np.arange(alphabet))
    weights /= weights.sum()
    return rng.choice(alphabet, size=count, p=weights)


def both(path_mode, fn) -> list:
    return [path_mode(path, lambda: outcome(fn)) for path in PATHS]


# -- exact decoding -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alphabet", "count", "chunk_size", "skew"),
    [
        (2, 1, 1, 0.0),
        (2, 5000, 4096, 0.0),
        (3, 8192, 4096, 1.0),  # count a multiple of the chunk size
        (32, 12345, 100, 0.2),  # many chunks, a short last one
        (256, 70000, 4096, 0.05),
        (256, 40000, 999, 0.6),  # codes up to 16 bits: second-level tables
        (65536, 30000, 777, 0.0),  # the largest alphabet
        (1000, 3, 4096, 0.01),  # one short chunk
    ],
)
def test_decode_matches_truth(path_mode, alphabet: int, count: int, chunk_size: int, skew: float) -> None:
    rng = np.random.default_rng(alphabet + count)
    symbols = skewed_symbols(rng, alphabet, count, skew)
    freqs = np.bincount(symbols, minlength=alphabet)
    stream = make_stream(symbols, freqs, chunk_size)
    if skew == 0.6:
        assert stream.lengths.max() > 11  # the second-level tables are exercised
    for path in PATHS:
        for threads in (1, 3):
            got = path_mode(path, lambda t=threads: codec.decode_symbols(stream, t))
            assert got.dtype == np.uint16
            np.testing.assert_array_equal(got, symbols)


def test_decode_large_stream_on_threads(path_mode) -> None:
    rng = np.random.default_rng(7)
    count = codec.MIN_PARALLEL_SYMBOLS * 2 + 12345
    symbols = skewed_symbols(rng, 64, count, 0.1)
    stream = make_stream(symbols, np.bincount(symbols, minlength=64), 1000)
    values = rng.normal(size=64).astype(np.float32)
    values[3] = 0.0
    flags = (values != 0).astype(np.uint8)
    for path in PATHS:
        for threads in (1, 2, 5):
            out, nonzeros = path_mode(path, lambda t=threads: codec.decode_values(stream, values, flags, t))
            np.testing.assert_array_equal(out, values[symbols])
            assert nonzeros == int(np.count_nonzero(values[symbols]))


def pair_share(lengths: np.ndarray) -> float:
    """The share of the native decoder's 11-bit (or max-length) root indices that begin with two
    complete codes: above one half, it decodes with a table of code pairs."""
    root_bits = min(int(lengths.max()), 11)
    first = np.full(1 << root_bits, 99)  # the length of the code each index begins with (99: longer)
    index = np.arange(1 << root_bits)
    reversed_codes = huffman.reverse_bits(huffman.canonical_codes(lengths), lengths)
    for code, length in zip(reversed_codes.tolist(), lengths.tolist(), strict=True):
        if 0 < length <= root_bits:
            first[(index & ((1 << length) - 1)) == code] = length
    short = first <= root_bits
    second = first[index[short] >> first[short]]
    return float(np.count_nonzero(first[short] + second <= root_bits)) / index.size


@pytest.mark.parametrize(
    ("count", "chunk_size"), [(50_000, 4096), (12_345, 1000), (70_001, 333), (9_000, 9_000)]
)
def test_pair_table_decoding(path_mode, count: int, chunk_size: int) -> None:
    """Streams of mostly short codes decode two codes a lookup in the native kernel (values of 2
    and 4 bytes, nonzeros counted, symbol sums), codes longer than the root table included."""
    rng = np.random.default_rng(count)
    symbols = skewed_symbols(rng, 60, count, 0.45)
    freqs = np.bincount(symbols, minlength=60)
    freqs[freqs == 0] = 1  # every symbol coded: the rarest take more than 11 bits
    stream = make_stream(symbols, freqs, chunk_size)
    assert stream.lengths.max() > 11 and pair_share(stream.lengths) > 0.5
    values = rng.normal(size=60)
    values[[0, 2, 59]] = 0.0  # zeros among the common and the long codes: nonzeros are counted
    flags = (values != 0).astype(np.uint8)
    for dtype in ("<f4", "<f2"):
        typed = values.astype(dtype)
        for path in PATHS:
            for threads in (1, 3):
                out, nonzeros = path_mode(
                    path, lambda t=threads, v=typed: codec.decode_values(stream, v, flags, t)
                )
                np.testing.assert_array_equal(out, typed[symbols])
                assert nonzeros == int(np.count_nonzero(flags[symbols]))
                got = path_mode(path, lambda t=threads: codec.decode_symbols(stream, t))
                np.testing.assert_array_equal(got, symbols)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(2500, 9000), flips=st.integers(0, 4))
def test_pair_table_corrupt_stream_property(path_mode, seed: int, count: int, flips: int) -> None:
    """Flipped bits in a stream that the pair tables decode: both paths give the same error or the
    same (wrong) values."""
    rng = np.random.default_rng(seed)
    symbols = skewed_symbols(rng, 40, count, rng.uniform(0.4, 0.8))
    freqs = np.bincount(symbols, minlength=40)
    freqs[freqs == 0] = 1
    stream = make_stream(symbols, freqs, int(rng.integers(100, 3000)))
    assert pair_share(stream.lengths) > 0.5  # every example runs the pair tables
    data = stream.data.copy()
    for _ in range(flips):
        data[rng.integers(data.size)] ^= np.uint8(1 << rng.integers(8))
    bad = dataclasses.replace(stream, data=data)
    values = rng.normal(size=40).astype(np.float32)
    flags = (rng.random(40) < 0.7).astype(np.uint8)
    results = both(path_mode, lambda: codec.decode_values(bad, values, flags, 2))
    for r in results[1:]:
        assert_same(results[0], r)


GUARDED_DECODES = """
import ctypes, dataclasses, mmap, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from test_decode import make_stream, skewed_symbols
from dcformat.codec import decode as codec

page = mmap.PAGESIZE
buffer = mmap.mmap(-1, 2 * page)
base = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.mprotect(ctypes.c_void_p(base + page), ctypes.c_size_t(page), 0) == 0  # PROT_NONE
rng = np.random.default_rng(0)
decoded = 0
for count in [*range(1, 80), 200, 1000, 5000]:
    for lengths in ([1, 2, 3, 3], [1, 1], [2, 2, 2, 2], [1, 2, 4, 4, 4, 4, 5, 5]):
        lengths = np.array(lengths, np.uint8)
        freqs = (2.0 ** -lengths.astype(float) * 1e6).astype(np.int64)
        symbols = rng.choice(len(lengths), size=count, p=freqs / freqs.sum())
        stream = make_stream(symbols, freqs, int(rng.integers(1, 300)))
        for flip in (False, True):
            data = stream.data.copy()
            if flip and data.size:
                data[rng.integers(data.size)] ^= np.uint8(1 << rng.integers(8))
            guarded = np.frombuffer(buffer, np.uint8, count=data.size, offset=page - data.size)
            guarded[:] = data  # the stream's last byte is the last readable one
            values = np.arange(1, len(lengths) + 1, dtype=np.float32)
            try:
                codec.decode_values(dataclasses.replace(stream, data=guarded), values, None)
                codec.decode_symbols(dataclasses.replace(stream, data=guarded))
            except Exception as exc:
                assert flip, exc
            decoded += 1
print(decoded)
"""


@pytest.mark.skipif(not NATIVE_WANTED or sys.platform != "linux", reason="native kernels on Linux")
def test_kernels_read_nothing_past_the_stream_data() -> None:
    """Streams whose last byte ends a readable page (the next page unreadable: a read past the
    data crashes) decode, valid and corrupt, pair tables included: regression of a tail loop
    that loaded 8 bytes from data shorter than 8."""
    here = str(Path(__file__).resolve().parent)
    run = subprocess.run([sys.executable, "-c", GUARDED_DECODES, here], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert int(run.stdout) == 82 * 4 * 2


@pytest.mark.parametrize("value_dtype", ["<f2", "<f4", "<f8", "<u2"])
def test_decode_values_of_each_width(path_mode, value_dtype: str) -> None:
    rng = np.random.default_rng(1)
    symbols = skewed_symbols(rng, 20, 10000, 0.3)
    stream = make_stream(symbols, np.bincount(symbols, minlength=20), 333)
    values = np.arange(20).astype(value_dtype) * 3
    flags = (np.arange(20) % 3 == 0).astype(np.uint8)
    expect = (values[symbols], int(np.count_nonzero(flags[symbols])))
    for path in PATHS:
        assert_same(
            ("ok", expect),
            path_mode(path, lambda: outcome(lambda: codec.decode_values(stream, values, flags))),
        )


@pytest.mark.parametrize("zero", ["used", "unused", "none"])
def test_nonzeros_counted_whichever_values_are_zero(path_mode, zero: str) -> None:
    """The native kernel counts per symbol only where a used symbol's value is zero; otherwise
    every decoded symbol counts. A zero value of a symbol the stream never uses changes nothing."""
    rng = np.random.default_rng(3)
    symbols = skewed_symbols(rng, 40, 50000, 0.2)
    symbols[symbols == 7] = 8  # symbol 7 is not in the stream
    stream = make_stream(symbols, np.bincount(symbols, minlength=40), 1000)
    values = rng.uniform(1, 2, 40).astype(np.float32)
    if zero != "none":
        values[5 if zero == "used" else 7] = 0.0
    flags = (values != 0).astype(np.uint8)
    for path in PATHS:
        out, nonzeros = path_mode(path, lambda: codec.decode_values(stream, values, flags))
        np.testing.assert_array_equal(out, values[symbols])
        assert nonzeros == int(np.count_nonzero(values[symbols]))
        assert path_mode(path, lambda: codec.decode_values(stream, values, None))[1] == 0


@pytest.mark.parametrize("count", [10, (codec.HUGE_PAGE >> 2) - 1, codec.HUGE_PAGE >> 2, 1_000_003])
def test_outputs_of_two_mib_or_more_start_on_a_two_mib_boundary(count: int) -> None:
    out = codec.output(count, np.dtype(np.float32))
    assert out.shape == (count,) and out.dtype == np.float32 and out.flags.writeable
    assert out.flags.c_contiguous
    if out.nbytes >= codec.HUGE_PAGE:  # small ones go wherever numpy puts them
        assert out.ctypes.data % codec.HUGE_PAGE == 0
    out[:] = 1.5  # the whole view is usable
    assert float(out.sum()) == 1.5 * count


def test_one_symbol_stream(path_mode) -> None:
    freqs = np.zeros(8, dtype=np.int64)
    freqs[5] = 1
    stream = make_stream(np.full(100, 5), freqs, 16)
    values = np.arange(8, dtype=np.float32)
    for path in PATHS:
        out, nonzeros = path_mode(path, lambda: codec.decode_values(stream, values, np.ones(8, np.uint8)))
        np.testing.assert_array_equal(out, np.full(100, 5.0, np.float32))
        assert nonzeros == 100
    bad = Stream(stream.data.copy(), stream.bit_length, stream.count, stream.lengths, 16, stream.offsets)
    bad.data[3] = 1
    results = both(path_mode, lambda: codec.decode_symbols(bad))
    assert results[0][:3] == ("error", "FormatError", "huffman-data")
    for r in results[1:]:
        assert_same(results[0], r)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    alphabet=st.integers(2, 300),
    count=st.integers(1, 5000),
    chunk_size=st.integers(1, 700),
    skew=st.floats(0.0, 1.0),
)
def test_decode_property(
    path_mode, seed: int, alphabet: int, count: int, chunk_size: int, skew: float
) -> None:
    rng = np.random.default_rng(seed)
    symbols = skewed_symbols(rng, alphabet, count, skew)
    freqs = np.bincount(symbols, minlength=alphabet)
    if np.count_nonzero(freqs) < 2:
        freqs[(symbols[0] + 1) % alphabet] = 1  # keep a two-symbol table
    stream = make_stream(symbols, freqs, chunk_size)
    for path in PATHS:
        np.testing.assert_array_equal(path_mode(path, lambda: codec.decode_symbols(stream, 2)), symbols)


# -- corrupt streams: both paths must agree on the error, or on the (wrong) symbols ----------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    alphabet=st.integers(2, 300),
    count=st.integers(1, 3000),
    chunk_size=st.integers(1, 400),
    flips=st.integers(0, 6),
    shuffle_offsets=st.booleans(),
)
def test_corrupt_stream_property(
    path_mode, seed: int, alphabet: int, count: int, chunk_size: int, flips: int, shuffle_offsets: bool
) -> None:
    rng = np.random.default_rng(seed)
    symbols = skewed_symbols(rng, alphabet, count, rng.uniform(0, 1))
    freqs = np.bincount(symbols, minlength=alphabet)
    if np.count_nonzero(freqs) < 2:
        freqs[(symbols[0] + 1) % alphabet] = 1
    stream = make_stream(symbols, freqs, chunk_size, origin=1000)
    data = stream.data.copy()
    for _ in range(flips):  # flip bits anywhere in the data, padding bits included
        data[rng.integers(data.size)] ^= np.uint8(1 << rng.integers(8))
    offsets = stream.offsets
    if shuffle_offsets and offsets.size:  # other valid-looking offsets: increasing, inside the stream
        offsets = np.sort(rng.choice(np.arange(1, stream.bit_length), size=offsets.size, replace=False))
        offsets = offsets.astype(np.uint64)
    bad = Stream(data, stream.bit_length, count, stream.lengths, chunk_size, offsets, origin=1000)
    values = rng.normal(size=alphabet).astype(np.float32)
    flags = (rng.random(alphabet) < 0.5).astype(np.uint8)
    results = both(path_mode, lambda: codec.decode_values(bad, values, flags, 2))
    for r in results[1:]:
        assert_same(results[0], r)
    if flips == 0 and not shuffle_offsets:
        assert results[0][0] == "ok"


def test_chunk_end_error_is_the_first_bad_chunk(path_mode) -> None:
    rng = np.random.default_rng(3)
    symbols = skewed_symbols(rng, 16, 4000, 0.3)
    stream = make_stream(symbols, np.bincount(symbols, minlength=16), 100, origin=64)
    offsets = stream.offsets.copy()
    offsets[9] += 1  # chunk 9 now ends one bit late, chunk 10 starts one bit late
    bad = Stream(stream.data, stream.bit_length, 4000, stream.lengths, 100, offsets, origin=64)
    results = both(path_mode, lambda: codec.decode_symbols(bad, 2))
    kind, name, rule, message, offset = results[0]
    assert (kind, name, rule) == ("error", "FormatError", "huffman-data")
    assert message == f"chunk 9 does not end at bit {int(offsets[9])}"
    assert offset == 64 + int(offsets[8]) // 8
    for r in results[1:]:
        assert_same(results[0], r)


def test_padding_bits_must_be_zero(path_mode) -> None:
    symbols = np.array([0, 1, 1, 0, 1])
    stream = make_stream(symbols, np.array([2, 3]), 4096, origin=128)
    assert stream.bit_length % 8
    data = stream.data.copy()
    data[-1] |= 0x80
    bad = Stream(data, stream.bit_length, 5, stream.lengths, 4096, stream.offsets, origin=128)
    results = both(path_mode, lambda: codec.decode_symbols(bad))
    assert results[0] == (
        "error",
        "FormatError",
        "huffman-data",
        "padding bits after the stream are not zero",
        128,
    )
    for r in results[1:]:
        assert_same(results[0], r)


# -- sparse scatter ---------------------------------------------------------------------------------


def sparse_case(rng: np.random.Generator, numel: int, entries: int, index_bits: int, chunk_size: int):
    from dcformat.codec import gaps as gaps_mod

    positions = np.sort(rng.choice(numel, size=entries, replace=False))
    codes = rng.integers(1, 16, size=entries)
    entry_gaps, entry_codes = gaps_mod.with_fillers(positions, codes, index_bits)
    gap_stream = make_stream(entry_gaps, np.bincount(entry_gaps, minlength=1 << index_bits), chunk_size)
    code_freqs = np.bincount(entry_codes, minlength=16)
    code_freqs[:2] += 1  # at least two symbols
    code_stream = make_stream(entry_codes, code_freqs, chunk_size)
    return positions, codes, code_stream, gap_stream


@pytest.mark.parametrize(("numel", "entries", "index_bits"), [(1000, 0, 4), (5000, 1, 3), (600000, 60000, 5)])
def test_sparse_scatter(path_mode, numel: int, entries: int, index_bits: int) -> None:
    rng = np.random.default_rng(numel)
    positions, codes, code_stream, gap_stream = sparse_case(rng, numel, entries, index_bits, 1024)
    values = np.linspace(0, 1, 16, dtype=np.float32)
    expect = np.zeros(numel, np.float32)
    expect[positions] = values[codes]
    for path in PATHS:
        for threads in (1, 4):

            def run(t=threads):
                code_symbols = codec.decode_symbols(code_stream, t)
                flags = (values != 0).astype(np.uint8)  # fillers carry code 0, value 0.0
                return codec.decode_sparse(code_symbols, gap_stream, numel, values, flags, t)

            out, nonzeros = path_mode(path, run)
            np.testing.assert_array_equal(out, expect)
            assert nonzeros == entries


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    numel=st.integers(1, 20000),
    density=st.floats(0.0, 1.0),
    index_bits=st.integers(1, 8),
    chunk_size=st.integers(1, 500),
    shrink=st.integers(0, 3),
    flips=st.integers(0, 3),
)
def test_sparse_property(
    path_mode,
    seed: int,
    numel: int,
    density: float,
    index_bits: int,
    chunk_size: int,
    shrink: int,
    flips: int,
) -> None:
    rng = np.random.default_rng(seed)
    entries = int(numel * density)
    positions, codes, code_stream, gap_stream = sparse_case(rng, numel, entries, index_bits, chunk_size)
    data = gap_stream.data.copy()
    for _ in range(flips if data.size else 0):
        data[rng.integers(data.size)] ^= np.uint8(1 << rng.integers(8))
    gap_bad = Stream(
        data, gap_stream.bit_length, gap_stream.count, gap_stream.lengths, chunk_size, gap_stream.offsets
    )
    values = rng.normal(size=16).astype(np.float16)
    values[0] = 0
    flags = (values != 0).astype(np.uint8)
    tensor_numel = max(0, numel - shrink)  # positions may now run past the end

    def run():
        code_symbols = codec.decode_symbols(code_stream, 2)
        return codec.decode_sparse(code_symbols, gap_bad, tensor_numel, values, flags, 2)

    results = both(path_mode, run)
    for r in results[1:]:
        assert_same(results[0], r)
    if flips == 0 and (shrink == 0 or not entries or positions[-1] < tensor_numel):
        expect = np.zeros(tensor_numel, np.float16)
        expect[positions] = values[codes]
        assert_same(results[0], ("ok", (expect, int(np.count_nonzero(values[codes])))))
    elif flips == 0:
        assert results[0][2] == "positions"


# -- whole files: get_tensor on both paths, corrupt sections with valid checksums -------------------


def rewrite(path, change) -> None:
    """Apply change(header, data_area) to a file and rewrite it with every checksum fixed (same
    version, the header uncompressed)."""
    raw = open(path, "rb").read()
    _, _, minor, header_length, _, _ = PREAMBLE.unpack(raw[:PREAMBLE_SIZE])
    header = pb.Header.FromString(raw[PREAMBLE_SIZE : PREAMBLE_SIZE + header_length])
    data = bytearray(raw[align_up(PREAMBLE_SIZE + header_length) :])
    header = dcformat.file.header.inflate_header(header, minor)  # written plain below
    change(header, data)
    for tensor in header.tensors:
        for section in dcformat.file.header.sections_of(tensor):
            section.crc32 = zlib.crc32(data[section.offset : section.offset + section.length])
    blob = header.SerializeToString()
    head = PREAMBLE.pack(b"\x89DCN\r\n\x1a\n", 1, minor, len(blob), zlib.crc32(blob), 0)
    head = head[:-4] + zlib.crc32(head[:-4]).to_bytes(4, "little") + blob
    with open(path, "wb") as f:
        f.write(head + bytes(align_up(len(head)) - len(head)) + bytes(data))


def model_file(tmp_path, seed: int = 0):
    rng = np.random.default_rng(seed)
    book = np.concatenate(([0.0], rng.normal(size=15))).astype(np.float32)
    dense_codes = rng.integers(0, 16, size=(300, 70))
    positions = np.sort(rng.choice(300 * 70, size=2000, replace=False))
    sparse_codes = rng.integers(1, 16, size=2000)
    tensors = {
        "dense": dcformat.Quantized(book, dense_codes, (300, 70)),
        "sparse": dcformat.Quantized(book, sparse_codes, (300, 70), positions=positions),
        "bias": rng.normal(size=70).astype(np.float32),
    }
    path = tmp_path / "m.dcnn"
    dcformat.save_file(tensors, path, chunk_size=256)
    sparse = np.zeros(300 * 70, np.float32)
    sparse[positions] = book[sparse_codes]
    return path, {"dense": book[dense_codes], "sparse": sparse.reshape(300, 70), "bias": tensors["bias"]}


def test_files_decode_alike(tmp_path, path_mode) -> None:
    path, expect = model_file(tmp_path)
    for p in PATHS:
        for threads in (1, 2):
            got = path_mode(p, lambda t=threads: dcformat.load_file(path, threads=t))
            assert got.keys() == expect.keys()
            for name in expect:
                np.testing.assert_array_equal(got[name], expect[name])


def test_in_parallel_keeps_order_and_shares_tasks_with_a_free_worker() -> None:
    caller = threading.get_ident()
    started = threading.Event()

    def task(i: int):
        if i == 0:  # the caller's first task lasts until a worker has taken one
            assert started.wait(10)
        elif threading.get_ident() != caller:
            started.set()
        return i, threading.get_ident()

    results = codec.in_parallel([lambda i=i: task(i) for i in range(6)], 2)
    assert [i for i, _ in results] == list(range(6))
    assert {who for _, who in results} >= {caller} and len({who for _, who in results}) == 2
    # the pool's worker busy elsewhere: the caller runs every task itself, waiting on nothing
    release = threading.Event()
    blocker = codec.pool(2).submit(release.wait, 10)
    try:
        assert codec.in_parallel([lambda i=i: (i, threading.get_ident()) for i in range(4)], 2) == [
            (i, caller) for i in range(4)
        ]
    finally:
        release.set()
        blocker.result()


DECODE_CHECK = """
import sys, numpy as np, dcformat
from dcformat.codec import decode
got = dcformat.load_file(sys.argv[1])
for name, want in np.load(sys.argv[2]).items():
    assert np.array_equal(got[name], want), name
print(decode._native.DECODE_ISA)
"""


@pytest.mark.skipif(not NATIVE_WANTED or not codec.AVAILABLE, reason="the native kernels are off")
def test_generic_decode_kernels_match_the_chosen_ones(tmp_path) -> None:
    """The kernel set chosen at import (BMI2 where the CPU has it) and the generic one, forced by
    DCNN_DECODE_ISA=generic in a fresh process, decode to the same tensors."""
    path, _ = model_file(tmp_path)
    np.savez(tmp_path / "want.npz", **dcformat.load_file(path))
    env = dict(os.environ, DCNN_DECODE_ISA="generic")
    run = subprocess.run(
        [sys.executable, "-c", DECODE_CHECK, str(path), str(tmp_path / "want.npz")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout.split() == ["generic"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), flips=st.integers(1, 4), nonzeros_delta=st.integers(-1, 1))
def test_corrupt_file_property(
    tmp_path_factory, path_mode, seed: int, flips: int, nonzeros_delta: int
) -> None:
    path, _ = model_file(tmp_path_factory.mktemp("c"), seed % 7)
    rng = np.random.default_rng(seed)

    def change(header, data) -> None:
        tensor = header.tensors[int(rng.integers(2))]
        sections = list(dcformat.file.header.sections_of(tensor))
        for _ in range(flips):
            s = sections[int(rng.integers(len(sections)))]
            data[s.offset + int(rng.integers(s.length))] ^= 1 << int(rng.integers(8))
        tensor.nonzeros = max(0, tensor.nonzeros + nonzeros_delta)

    rewrite(path, change)

    def read():
        with dcformat.safe_open(path) as f:
            return tuple(f.get_tensor(name) for name in f.keys())

    results = both(path_mode, read)
    for r in results[1:]:
        assert_same(results[0], r)
    if results[0][0] == "error":
        assert results[0][2] in ("huffman-data", "positions", "nonzeros")


# -- the kernels guard themselves against inconsistent arguments ------------------------------------


GUARD_CASES = {
    "short output": {11: np.empty(59, np.float32)},
    "bad value size": {9: 3},
    "short values": {8: np.arange(2, dtype=np.float32)},
    "chunk range": {7: 9},
    "offset count": {4: None},
    "bit length": {1: None},
    "incomplete table": {2: np.array([1, 2, 3], np.uint8)},
    "one-symbol table": {2: np.array([1, 0, 0], np.uint8)},
    "codes over 16 bits": {2: np.array([1, 17, 17], np.uint8)},
    "zero chunk size": {3: 0},
}

if codec.AVAILABLE:  # the kernels themselves; the numpy path has no counterpart
    from dcformat.codec import _native

    def guard_args():
        symbols = np.array([0, 1, 2, 1, 0, 2] * 10)
        s = make_stream(symbols, np.array([5, 5, 5]), 8)
        values = np.arange(3, dtype=np.float32)
        out = np.empty(60, np.float32)
        args = [s.data, s.bit_length, s.lengths, 8, s.offsets, 60, 0, s.n_chunks, values, 4, None, out]
        return symbols, s, args

    def test_kernel_decodes_a_range() -> None:
        symbols, s, args = guard_args()
        assert s.n_chunks == 8
        args[6], args[7] = 2, 5
        out = args[11]
        out[:] = -1
        assert _native.decode(*args)[0] == -1
        expect = np.full(60, -1, np.float32)
        expect[16:40] = symbols[16:40]
        np.testing.assert_array_equal(out, expect)

    @pytest.mark.parametrize("case", list(GUARD_CASES))
    def test_kernel_rejects_inconsistent_arguments(case: str) -> None:
        _, s, args = guard_args()
        for i, v in GUARD_CASES[case].items():
            args[i] = v
        if case == "offset count":
            args[4] = s.offsets[:-1]
        if case == "bit length":
            args[1] = s.data.size * 8 + 1
        with pytest.raises(ValueError):
            _native.decode(*args)

    def test_kernel_scatter_guards() -> None:
        values = np.arange(3, dtype=np.float32)
        gaps = np.array([0, 3, 1], np.uint16)
        codes = np.array([1, 2, 1], np.uint16)
        dense = np.zeros(7, np.float32)
        assert _native.scatter(gaps, codes, values, 4, np.ones(3, np.uint8), dense, -1) == (-1, 6, 3)
        np.testing.assert_array_equal(dense, [1, 0, 0, 0, 2, 0, 1])
        assert _native.scatter(gaps, codes, values, 4, None, np.zeros(6, np.float32), -1)[:2] == (2, 6)
        assert _native.scatter(gaps, np.array([1, 3, 1], np.uint16), values, 4, None, dense, -1)[0] == 1
        for bad in (
            (gaps[:2], codes, values, 4, None, dense, -1),
            (gaps, codes, values, 4, None, dense, 7),
            (gaps, codes, values, 3, None, dense, -1),
        ):
            with pytest.raises(ValueError):
                _native.scatter(*bad)


def test_data_size_must_match_bit_length(path_mode) -> None:
    symbols = np.array([0, 1, 1, 0, 1, 1, 1, 0, 0])
    stream = make_stream(symbols, np.array([4, 5]), 4)
    short = Stream(stream.data[:-1], stream.bit_length, 9, stream.lengths, 4, stream.offsets)
    results = both(path_mode, lambda: codec.decode_values(short, np.arange(2, dtype=np.float32), None))
    assert results[0][:3] == ("error", "FormatError", "huffman-data")
    for r in results[1:]:
        assert_same(results[0], r)


def test_crc32_is_zlibs(path_mode) -> None:
    rng = np.random.default_rng(11)
    data = rng.integers(0, 256, 70000, dtype=np.uint8)
    for path in PATHS:
        for start, stop in [(0, 0), (0, 1), (3, 66), (1, 64), (5, 1029), (0, 70000), (7, 69999)]:
            view = data[start:stop]
            assert path_mode(path, lambda v=view: codec.crc32(v)) == zlib.crc32(view)


@pytest.mark.skipif(not NATIVE_WANTED, reason="the native extension is switched off")
def test_native_stream_check_accepts_exactly_what_numpy_accepts(monkeypatch) -> None:
    """coded.check_stream's one-call native fast path, on a valid record and on copies with one
    field changed: True exactly where the numpy checks pass."""
    from dcformat.encodings import coded
    from dcformat.layout import MAX_CHUNK_SIZE

    rng = np.random.default_rng(12)
    symbols = skewed_symbols(rng, 50, 20000, 0.3)
    stream = make_stream(symbols, np.bincount(symbols, minlength=50), 900)
    base = pb.HuffmanStream(
        code_lengths=stream.lengths.tobytes(),
        count=stream.count,
        chunk_size=stream.chunk_size,
        bit_length=stream.bit_length,
        chunk_offsets=stream.offsets.tolist(),
    )
    base.data.length = stream.data.size
    offsets = list(base.chunk_offsets)
    lengths = bytearray(base.code_lengths)
    changes = [
        {},
        {"count": base.count + 1},
        {"count": base.count - 1},
        {"count": 0},
        {"chunk_size": base.chunk_size + 1},
        {"chunk_size": 0},
        {"chunk_size": MAX_CHUNK_SIZE + 1},
        {"bit_length": base.bit_length + 1},
        {"bit_length": base.bit_length - 8},
        {"chunk_offsets": offsets[:-1]},
        {"chunk_offsets": [0, *offsets[1:]]},
        {"chunk_offsets": [offsets[1], offsets[0], *offsets[2:]]},
        {"chunk_offsets": [*offsets[:-1], base.bit_length]},
        {"chunk_offsets": [1, *offsets[1:]]},
        {"code_lengths": bytes(lengths[:-1])},
        {"code_lengths": bytes([17]) + bytes(lengths[1:])},
        {"code_lengths": bytes([1]) + bytes(lengths[1:])},
        {"code_lengths": bytes(len(lengths))},
        {"length": stream.data.size + 1},
    ]
    outcomes = []
    for change in changes:
        record = pb.HuffmanStream()
        record.CopyFrom(base)
        for field, value in change.items():
            if field == "length":
                record.data.length = value
            elif field == "chunk_offsets":
                del record.chunk_offsets[:]
                record.chunk_offsets.extend(value)
            else:
                setattr(record, field, value)
        with monkeypatch.context() as m:
            m.setenv("DCNN_NO_NATIVE", "1")
            try:
                coded.check_stream(record, 50, "codes")
                passes = True
            except dcformat.FormatError:
                passes = False
        native = codec._native.stream_ok(
            record.code_lengths,
            record.count,
            record.chunk_size,
            record.bit_length,
            np.asarray(record.chunk_offsets, dtype=np.uint64),
            record.data.length,
            50,
            MAX_CHUNK_SIZE,
        )
        assert native == passes, change
        outcomes.append(passes)
    assert outcomes[0] and not all(outcomes[1:])
