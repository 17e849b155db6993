"""Canonical Huffman: lengths, canonical codes, bit order, chunked round trips, invalid tables."""

import dataclasses
import heapq
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dcformat.codec import decode, huffman, huffman_numpy
from dcformat.errors import FormatError


def kraft(lengths: np.ndarray) -> float:
    used = lengths[lengths > 0].astype(np.int64)
    return float(np.sum(2.0**-used))


def unlimited_huffman_cost(freqs: np.ndarray) -> int:
    """Cost of an optimal (unlimited) Huffman code, by the textbook heap construction."""
    heap = [int(f) for f in freqs if f > 0]
    if len(heap) < 2:
        return int(sum(heap))
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        cost += merged
        heapq.heappush(heap, merged)
    return cost


def test_rfc1951_example_codes():
    lengths = np.array([3, 3, 3, 3, 3, 2, 4, 4], np.uint8)
    codes = huffman.canonical_codes(lengths)
    as_text = [format(int(c), f"0{n}b") for c, n in zip(codes, lengths, strict=True)]
    assert as_text == ["010", "011", "100", "101", "110", "00", "1110", "1111"]


def test_spec_worked_example_bytes():
    symbols = np.array([1, 1, 2, 0, 1, 3, 1, 2, 1, 4])
    lengths = huffman.code_lengths(np.bincount(symbols, minlength=5))
    assert lengths.tolist() == [3, 1, 3, 3, 3]
    stream = huffman.encode(symbols, lengths, chunk_size=4)
    assert stream.data.tobytes() == bytes([0x34, 0xA6, 0x0E])
    assert stream.bit_length == 20 and stream.count == 10
    assert stream.offsets.tolist() == [8, 16]
    decoded = huffman_numpy.decode(stream)
    assert decoded.tolist() == symbols.tolist()


@given(hnp.arrays(np.int64, st.integers(1, 300), elements=st.integers(0, 10**9)))
def test_lengths_are_valid_and_optimal_when_unconstrained(freqs):
    lengths = huffman.code_lengths(freqs)
    used = int(np.count_nonzero(freqs))
    assert np.array_equal(lengths > 0, freqs > 0)
    assert lengths.max(initial=0) <= 16
    huffman.check_table(lengths, count=int(freqs.sum()))
    if used >= 2:
        assert kraft(lengths) == 1.0
        optimal = unlimited_huffman_cost(freqs)
        cost = huffman.encoded_bits(freqs, lengths)
        assert cost >= optimal
        if lengths.max() < 16:  # no limiting happened: must be optimal
            assert cost == optimal


def test_length_limiting_on_fibonacci_frequencies():
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    freqs = np.array(fib, np.int64)
    lengths = huffman.code_lengths(freqs)
    assert lengths.max() == 16  # an unlimited code would need 39 bits
    assert kraft(lengths) == 1.0
    huffman.check_table(lengths, 1)
    # more frequent symbols never get longer codes
    order = np.argsort(-freqs, kind="stable")
    assert np.all(np.diff(lengths[order].astype(int)) >= 0)


@given(
    st.integers(1, 2000),
    st.integers(1, 5000),
    st.integers(1, 300),
    st.integers(0, 2**32 - 1),
)
def test_round_trip_any_alphabet_and_chunking(alphabet, count, chunk_size, seed):
    rng = np.random.default_rng(seed)
    skew = rng.uniform(0.01, 3.0)
    symbols = np.minimum(rng.pareto(skew, count) * 3, alphabet - 1).astype(np.int64)
    lengths = huffman.code_lengths(np.bincount(symbols, minlength=alphabet))
    stream = huffman.encode(symbols, lengths, chunk_size)
    out = huffman_numpy.decode(stream)
    assert np.array_equal(out, symbols)


def test_full_16_bit_alphabet_round_trip():
    rng = np.random.default_rng(3)
    symbols = rng.integers(0, 65536, 200_000)
    lengths = huffman.code_lengths(np.bincount(symbols, minlength=65536))
    stream = huffman.encode(symbols, lengths, 4096)
    out = huffman_numpy.decode(stream)
    assert np.array_equal(out, symbols)


def test_one_symbol_stream_is_one_zero_bit_per_symbol():
    lengths = huffman.code_lengths(np.array([0, 0, 9, 0]))
    assert lengths.tolist() == [0, 0, 1, 0]
    stream = huffman.encode(np.full(9, 2), lengths, 4)
    assert stream.bit_length == 9 and stream.data.tobytes() == bytes(2)
    out = decode.decode_symbols(stream)  # one-symbol streams are decoded before any table lookup
    assert out.tolist() == [2] * 9


@pytest.mark.parametrize(
    ("lengths", "count", "message"),
    [
        ([1, 1, 1], 3, "over-subscribed"),
        ([1, 2, 3], 3, "incomplete"),
        ([2], 3, "one-symbol"),
        ([17, 1], 2, "exceeds"),
        ([0, 0], 5, "empty table"),
    ],
)
def test_invalid_tables_rejected(lengths, count, message):
    with pytest.raises(FormatError, match=message) as info:
        huffman.check_table(np.array(lengths, np.uint8), count)
    assert info.value.rule == "huffman-table"


def test_decode_detects_chunk_end_mismatch():
    symbols = np.array([0, 1, 2, 3] * 5)
    lengths = huffman.code_lengths(np.array([4, 3, 2, 1]))
    stream = huffman.encode(symbols, lengths, 5)
    offsets = stream.offsets.copy()
    offsets[1] += 1
    with pytest.raises(FormatError) as info:
        huffman_numpy.decode(dataclasses.replace(stream, offsets=offsets))
    assert info.value.rule == "huffman-data"


@pytest.mark.parametrize("corrupt", [False, True])
@given(st.integers(2, 300), st.integers(1, 3000), st.integers(1, 500), st.integers(0, 2**32 - 1))
def test_sweep_and_pointer_jumping_decode_alike(corrupt, alphabet, count, chunk_size, seed):
    rng = np.random.default_rng(seed)
    symbols = np.minimum(rng.geometric(0.2, count) - 1, alphabet - 1)
    lengths = huffman.code_lengths(np.bincount(symbols, minlength=alphabet))
    stream = huffman.encode(symbols, lengths, chunk_size)
    data = stream.data.copy()
    if corrupt and data.size:
        data[rng.integers(data.size)] ^= 1 << int(rng.integers(8))
    results = []
    for jumps in (False, True):
        try:
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(huffman_numpy, "_jumps_are_cheaper", lambda *_, jumps=jumps: jumps)
                results.append(huffman_numpy.decode(dataclasses.replace(stream, data=data)).tolist())
        except FormatError as exc:
            results.append((exc.rule, exc.message, exc.offset))
    assert results[0] == results[1]
    if not corrupt:
        assert results[0] == symbols.tolist()


NATIVE_WANTED = os.environ.get("DCNN_NO_NATIVE", "") in ("", "0")


def test_native_encoder_is_built():
    # The package build compiles it; set DCNN_NO_NATIVE=1 to run the suite on the numpy path alone.
    assert huffman._encode is not None or not NATIVE_WANTED


def _packed_both_ways(symbols: np.ndarray, lengths: np.ndarray, chunk_size: int) -> tuple:
    freqs = np.bincount(symbols.astype(np.int64), minlength=lengths.size)
    bits = huffman.encoded_bits(freqs, lengths)
    codes = huffman.reverse_bits(huffman.canonical_codes(lengths), lengths)
    return (
        huffman._pack_native(symbols, lengths, codes, chunk_size, bits),
        huffman._pack_numpy(symbols, lengths, codes, chunk_size, bits),
    )


@pytest.mark.skipif(huffman._encode is None, reason="the native encoder is not built")
@given(
    st.sampled_from([np.uint8, np.uint16]),
    st.integers(2, 2000),
    st.integers(2, 5000),
    st.integers(1, 300),
    st.integers(0, 2**32 - 1),
)
def test_native_pack_and_counts_equal_numpy(dtype, alphabet, count, chunk_size, seed):
    alphabet = min(alphabet, np.iinfo(dtype).max + 1)
    rng = np.random.default_rng(seed)
    symbols = np.minimum(rng.pareto(rng.uniform(0.01, 3.0), count) * 3, alphabet - 1).astype(dtype)
    symbols[:2] = [0, alphabet - 1]  # at least two symbols: a real code
    freqs = np.bincount(symbols.astype(np.int64), minlength=alphabet)
    counted = np.zeros(alphabet, np.int64)
    huffman._encode.frequencies(symbols, symbols.itemsize, counted)
    assert np.array_equal(counted, freqs)
    (data, offsets), (want_data, want_offsets) = _packed_both_ways(
        symbols, huffman.code_lengths(freqs), chunk_size
    )
    assert data.tobytes() == want_data.tobytes()
    assert np.array_equal(offsets, want_offsets)


@pytest.mark.skipif(huffman._encode is None, reason="the native encoder is not built")
def test_native_pack_full_16_bit_codes_equal_numpy():
    freqs = np.array([1 << 20] + [1] * 4000 + [2**i for i in range(16)], dtype=np.int64)
    lengths = huffman.code_lengths(freqs)
    assert lengths.max() == 16
    symbols = np.random.default_rng(1).permutation(np.repeat(np.arange(freqs.size), np.minimum(freqs, 50)))
    (data, offsets), (want_data, want_offsets) = _packed_both_ways(symbols.astype(np.uint16), lengths, 1000)
    assert data.tobytes() == want_data.tobytes() and np.array_equal(offsets, want_offsets)
    (data, offsets), (want_data, want_offsets) = _packed_both_ways(np.zeros(0, np.uint8), lengths[:2], 7)
    assert data.size == want_data.size == offsets.size == want_offsets.size == 0


@pytest.mark.skipif(huffman._encode is None, reason="the native encoder is not built")
def test_native_kernels_reject_bad_input():
    lengths = np.array([1, 2, 0, 2], np.uint8)
    codes = huffman.reverse_bits(huffman.canonical_codes(lengths), lengths)
    symbols = np.array([0, 1, 2, 3], np.uint8)  # symbol 2 has no code
    with pytest.raises(ValueError, match="no code"):
        huffman._encode.pack(symbols, 1, codes, lengths, 2, np.zeros(64, np.uint8), np.zeros(1, np.uint64))
    symbols = np.array([0, 1, 3, 3], np.uint8)
    with pytest.raises(ValueError, match="too small"):  # 7 bits do not fit 0 bytes
        huffman._encode.pack(symbols, 1, codes, lengths, 2, np.zeros(0, np.uint8), np.zeros(1, np.uint64))
    counts = np.zeros(3, np.int64)
    with pytest.raises(ValueError, match="outside the alphabet"):
        huffman._encode.frequencies(symbols, 1, counts)
    assert not counts.any()


def test_encode_numpy_and_native_paths_write_the_same_stream(monkeypatch):
    symbols = np.random.default_rng(3).integers(0, 300, 100_000).astype(np.uint16)
    lengths = huffman.code_lengths(np.bincount(symbols, minlength=300))
    streams = []
    for no_native in ("1", "0"):
        monkeypatch.setenv("DCNN_NO_NATIVE", no_native)
        streams.append(huffman.encode(symbols, lengths, 4096))
    numpy_stream, default_stream = streams
    assert numpy_stream.data.tobytes() == default_stream.data.tobytes()
    assert np.array_equal(numpy_stream.offsets, default_stream.offsets)
    assert numpy_stream.bit_length == default_stream.bit_length
    assert np.array_equal(huffman_numpy.decode(default_stream), symbols)
    for no_native in ("1", "0"):  # counts that do not match the symbols
        monkeypatch.setenv("DCNN_NO_NATIVE", no_native)
        with pytest.raises(ValueError, match=r"frequencies given|too small"):
            huffman.encode(symbols, lengths, 4096, freqs=np.bincount(symbols[1:], minlength=300))
