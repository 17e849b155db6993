"""Canonical Huffman coding, as spec section 6 defines it.

A table is a code length per symbol. Codes are assigned canonically (RFC 1951
section 3.2.2) and written into an LSB-first bitstream, most significant code bit
first. Streams are cut into chunks of ``chunk_size`` symbols whose starting bit
offsets are recorded, so decoding runs across all chunks at once (``huffman_numpy`` and the
native kernel decode).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import FormatError, fail
from ..layout import MAX_CODE_LENGTH

try:  # the C kernels of dcformat/codec/_encode.c; the numpy code below gives the same bytes
    from . import _encode
except ImportError:
    _encode = None

_REVERSED_BYTE = np.array([int(f"{i:08b}"[::-1], 2) for i in range(256)], dtype=np.uint32)


@dataclass(frozen=True)
class Stream:
    """One chunked Huffman stream: what the encoder produces and the decoders take."""

    data: np.ndarray  # uint8, the section bytes
    bit_length: int
    count: int
    lengths: np.ndarray  # uint8, one code length per symbol
    chunk_size: int
    offsets: np.ndarray  # uint64 bit offsets of chunks 1..n-1
    origin: int = 0  # file offset of data, added to error offsets

    @property
    def n_chunks(self) -> int:
        return -(-self.count // self.chunk_size)


def code_lengths(freqs: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Length-limited Huffman code lengths (uint8, one per symbol) for symbol frequencies.

    Unused symbols get 0; a single used symbol gets length 1. Lengths never exceed
    ``max_length`` and, with two or more used symbols, form a complete code.
    """
    freqs = np.asarray(freqs, dtype=np.int64)
    lengths = np.zeros(freqs.size, dtype=np.uint8)
    used = np.flatnonzero(freqs)
    if used.size == 0:
        return lengths
    if used.size == 1:
        lengths[used[0]] = 1
        return lengths
    if used.size > 1 << max_length:
        raise ValueError(f"{used.size} symbols cannot be coded in {max_length} bits")
    order = used[np.lexsort((used, freqs[used]))]  # ascending frequency, then symbol
    depths = _huffman_depths(freqs[order].tolist())
    bl_count = np.bincount(depths, minlength=max(depths) + 1).tolist()
    if len(bl_count) - 1 > max_length:
        bl_count = _limit_lengths(bl_count, max_length)
    # Shortest lengths go to the most frequent symbols: `order` is least frequent first.
    sorted_lengths = np.repeat(np.arange(len(bl_count)), bl_count)[::-1]
    lengths[order] = sorted_lengths
    return lengths


def _huffman_depths(weights: list[int]) -> list[int]:
    """Leaf depths of a Huffman tree over ascending weights (two-queue construction)."""
    n = len(weights)
    weight = weights + [0] * (n - 1)
    parent = [0] * (2 * n - 1)
    leaf, node = 0, n
    for new in range(n, 2 * n - 1):
        children = []
        for _ in range(2):
            if leaf < n and (node >= new or weight[leaf] <= weight[node]):
                children.append(leaf)
                leaf += 1
            else:
                children.append(node)
                node += 1
        weight[new] = weight[children[0]] + weight[children[1]]
        parent[children[0]] = parent[children[1]] = new
    depth = [0] * (2 * n - 1)
    for i in range(2 * n - 3, -1, -1):
        depth[i] = depth[parent[i]] + 1
    return depth[:n]


def _limit_lengths(bl_count: list[int], max_length: int) -> list[int]:
    """Move leaves deeper than max_length up, keeping the code complete (JPEG Annex K.3)."""
    count = list(bl_count)
    for i in range(len(count) - 1, max_length, -1):
        while count[i] > 0:
            j = i - 2
            while count[j] == 0:
                j -= 1
            count[i] -= 2
            count[i - 1] += 1
            count[j + 1] += 2
            count[j] -= 1
    return count[: max_length + 1]


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code of each symbol (uint32; 0 for unused symbols), RFC 1951 rule."""
    lengths = np.asarray(lengths, dtype=np.int64)
    bl_count = np.bincount(lengths, minlength=MAX_CODE_LENGTH + 1)
    bl_count[0] = 0
    next_code = np.zeros(bl_count.size, dtype=np.int64)
    code = 0
    for bits in range(1, bl_count.size):
        code = (code + int(bl_count[bits - 1])) << 1
        next_code[bits] = code
    used = np.flatnonzero(lengths)
    ranked = used[np.argsort(lengths[used], kind="stable")]  # by length, then symbol
    ranked_lengths = lengths[ranked]
    first_of_length = np.searchsorted(ranked_lengths, ranked_lengths, side="left")
    codes = np.zeros(lengths.size, dtype=np.uint32)
    codes[ranked] = next_code[ranked_lengths] + (np.arange(ranked.size) - first_of_length)
    return codes


def reverse_bits(codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Reverse the low ``lengths`` bits of each code (codes of up to 16 bits)."""
    codes = codes.astype(np.uint32)
    rev16 = (_REVERSED_BYTE[codes & 0xFF] << 8) | _REVERSED_BYTE[(codes >> 8) & 0xFF]
    return (rev16 >> (16 - lengths.astype(np.uint32))).astype(np.uint32)


def check_table(lengths: np.ndarray, count: int) -> None:
    """Raise FormatError unless ``lengths`` is a valid table for a stream of ``count`` symbols."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and int(lengths.max()) > MAX_CODE_LENGTH:
        fail(
            FormatError(
                f"code length {int(lengths.max())} exceeds the maximum {MAX_CODE_LENGTH}",
                rule="huffman-table",
            )
        )
    used = int(np.count_nonzero(lengths))
    if used == 0:
        if count:
            fail(FormatError(f"a stream of {count} symbols has an empty table", rule="huffman-table"))
        return
    if used == 1:
        if int(lengths.max()) != 1:
            fail(FormatError("a one-symbol table must give that symbol length 1", rule="huffman-table"))
        return
    kraft = int(np.sum(np.left_shift(1, MAX_CODE_LENGTH - lengths[lengths > 0])))
    if kraft > 1 << MAX_CODE_LENGTH:
        fail(FormatError("over-subscribed table (Kraft sum above 1)", rule="huffman-table"))
    if kraft < 1 << MAX_CODE_LENGTH:
        fail(FormatError("incomplete table (Kraft sum below 1)", rule="huffman-table"))


def encoded_bits(freqs: np.ndarray, lengths: np.ndarray) -> int:
    """Bits a stream with these symbol frequencies takes under these code lengths."""
    return int(np.dot(np.asarray(freqs, dtype=np.int64), np.asarray(lengths, dtype=np.int64)))


_BLOCK = 1 << 20  # symbols packed per step: bounded, reusable temporaries


def native() -> bool:
    """Whether encoding goes through the C kernels (built, and not DCNN_NO_NATIVE=1)."""
    return _encode is not None and os.environ.get("DCNN_NO_NATIVE", "") in ("", "0")


def _native_symbols(symbols: np.ndarray) -> bool:
    return symbols.dtype in (np.uint8, np.uint16) and native()


def frequencies(symbols: np.ndarray, alphabet: int) -> np.ndarray:
    """How often each symbol of 0..alphabet-1 occurs (int64), counted a block at a time:
    small integer symbols are not widened all at once."""
    symbols = np.asarray(symbols).ravel()
    freqs = np.zeros(alphabet, dtype=np.int64)
    if _native_symbols(symbols) and alphabet >= 1:
        _encode.frequencies(np.ascontiguousarray(symbols), symbols.itemsize, freqs)
        return freqs
    for first in range(0, symbols.size, _BLOCK):
        freqs += np.bincount(symbols[first : first + _BLOCK], minlength=alphabet)
    return freqs


def encode(
    symbols: np.ndarray, lengths: np.ndarray, chunk_size: int, freqs: np.ndarray | None = None
) -> Stream:
    """Huffman-code ``symbols`` with the table ``lengths``; a chunk starts every chunk_size symbols.

    ``freqs``, the symbols' counts, saves counting them again when the caller has them.
    """
    symbols = np.asarray(symbols).ravel()
    lengths = np.asarray(lengths, dtype=np.uint8)
    if np.count_nonzero(lengths) == 1:  # one symbol: code "0" of length 1
        bit_length = symbols.size
        offsets = np.arange(chunk_size, symbols.size, chunk_size, dtype=np.uint64)
        return Stream(
            np.zeros(-(-bit_length // 8), np.uint8), bit_length, symbols.size, lengths, chunk_size, offsets
        )
    if freqs is None:
        freqs = frequencies(symbols, lengths.size)
    bit_length = encoded_bits(freqs, lengths)
    reversed_codes = reverse_bits(canonical_codes(lengths), lengths)
    pack = _pack_native if _native_symbols(symbols) else _pack_numpy
    data, offsets = pack(symbols, lengths, reversed_codes, chunk_size, bit_length)
    return Stream(data, bit_length, symbols.size, lengths, chunk_size, offsets)


def _pack_native(
    symbols: np.ndarray, lengths: np.ndarray, reversed_codes: np.ndarray, chunk_size: int, bit_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """The stream's bytes and chunk offsets, packed by the C kernel (uint8/uint16 symbols)."""
    data = np.zeros(-(-bit_length // 8), dtype=np.uint8)
    offsets = np.empty(max(0, -(-symbols.size // chunk_size) - 1), dtype=np.uint64)
    packed = _encode.pack(
        np.ascontiguousarray(symbols), symbols.itemsize, reversed_codes, lengths, chunk_size, data, offsets
    )
    if packed != bit_length:
        raise ValueError(f"the frequencies given count {bit_length} bits, the symbols {packed}")
    return data, offsets


def _pack_numpy(
    symbols: np.ndarray, lengths: np.ndarray, reversed_codes: np.ndarray, chunk_size: int, bit_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """The stream's bytes and chunk offsets, packed with numpy a block at a time."""
    reversed_codes = reversed_codes.astype(np.uint64)
    table_lengths = lengths.astype(np.uint64)
    words = np.zeros(-(-bit_length // 64) + 1, dtype="<u8")
    offsets = []
    bit = np.uint64(0)
    for first in range(0, symbols.size, _BLOCK):
        block = symbols[first : first + _BLOCK].astype(np.intp, copy=False)
        block_lengths = table_lengths[block]
        starts = np.cumsum(block_lengths) + bit
        bit = starts[-1]
        starts -= block_lengths
        _pack_into(words, reversed_codes[block], starts)
        offsets.append(starts[(-first) % chunk_size :: chunk_size].copy())  # not a view of the block
    if int(bit) != bit_length:
        raise ValueError(f"the frequencies given count {bit_length} bits, the symbols {int(bit)}")
    chunk_offsets = np.concatenate([np.zeros(0, np.uint64), *offsets])[1:]
    data = words.view(np.uint8)[: -(-bit_length // 8)].copy()
    return data, chunk_offsets


def _pack_into(words: np.ndarray, values: np.ndarray, starts: np.ndarray) -> None:
    """OR each value (at most 32 bits, uint64) into an LSB-first stream of 64-bit words at its
    bit offset. ``starts`` is non-decreasing and the values do not overlap."""
    shift = starts & np.uint64(63)
    word = starts >> np.uint64(6)
    first = np.flatnonzero(word[1:] != word[:-1]) + 1
    first = np.concatenate(([0], first))
    words[word[first]] |= np.bitwise_or.reduceat(values << shift, first)
    # A code crossing a word boundary spills its high bits into the next word;
    # at most one code crosses each boundary.
    spill = np.flatnonzero(shift > np.uint64(32))
    high = values[spill] >> (np.uint64(64) - shift[spill])
    crossing = high != 0
    words[word[spill[crossing]] + np.uint64(1)] |= high[crossing]
