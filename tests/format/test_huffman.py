"""Canonical Huffman: lengths, canonical codes, bit order, chunked round trips, invalid tables."""

import dataclasses
import heapq

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
