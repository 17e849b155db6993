"""The numpy decoder of chunked Huffman streams, and the numpy fallbacks of the sparse
scatter and nonzero count: the same results and errors as the native kernels, slower."""

from __future__ import annotations

import numpy as np

from ..errors import FormatError, fail
from .huffman import Stream, canonical_codes, reverse_bits

# Decoding steps per block of the sweep decoder.
_STEP_BLOCK = 64
# Entries the scatter or count handles at a time (bounds their int64 temporaries).
_BLOCK = 1 << 16


def decode(stream: Stream) -> np.ndarray:
    """The stream's symbols (uint16), decoded across all chunks at once.

    ``codec.decode`` runs the prologue first (sizes, padding bits, one-symbol streams);
    this checks what only decoding can: every chunk ends exactly where the next begins
    and the last at ``bit_length``. Error offsets are file offsets (``stream.origin``).
    """
    try:
        return _decode(stream)
    except FormatError as exc:
        if exc.offset is not None:
            exc.offset += stream.origin
        raise


def _decode(stream: Stream) -> np.ndarray:
    lengths, buf, count = stream.lengths, stream.data, stream.count
    bit_length, chunk_size = stream.bit_length, stream.chunk_size
    if count == 0:
        return np.zeros(0, dtype=np.uint16)
    max_len = int(lengths.max())
    lut_symbol, lut_length = _lookup_table(lengths, max_len)
    starts = np.concatenate(([0], stream.offsets.astype(np.int64)))
    ends = np.concatenate((starts[1:], [bit_length]))
    n_chunks = starts.size
    last_count = count - (n_chunks - 1) * chunk_size
    steps = chunk_size if n_chunks > 1 else last_count
    # A corrupt chunk may run past the end: pad so every read stays in the buffer.
    padded = np.zeros(buf.size + 2 * steps + 8, dtype=np.uint8)
    padded[: buf.size] = buf
    window = np.ndarray((padded.size - 3,), dtype="<u4", buffer=padded, strides=(1,))
    mask = np.uint32((1 << max_len) - 1)
    lut_symbol = lut_symbol.astype(np.uint16)
    if _jumps_are_cheaper(steps, n_chunks, count, bit_length):
        return _decode_by_jumps(window, mask, lut_symbol, lut_length, starts, ends, count, chunk_size)
    # Steps are decoded a block at a time across all chunks, then moved into the chunk-major
    # output: no temporary of the stream's size.
    out = np.empty(n_chunks * steps, dtype=np.uint16)
    columns = out.reshape(n_chunks, steps)
    block = np.empty((min(_STEP_BLOCK, steps), n_chunks), dtype=np.uint16)
    pos = starts.copy()
    for first in range(0, steps, _STEP_BLOCK):
        rows = min(_STEP_BLOCK, steps - first)
        for row in range(rows):
            if first + row == last_count:  # the last chunk is shorter: drop it from the sweep
                ends_reached = pos[-1]
                pos = pos[:-1]
            index = (window[pos >> 3] >> (pos & 7).astype(np.uint32)) & mask
            lut_symbol.take(index, out=block[row, : pos.size], mode="clip")
            pos += lut_length[index]
        columns[:, first : first + rows] = block[:rows].T
    if last_count < steps:
        pos = np.concatenate((pos, [ends_reached]))
    _check_chunk_ends(pos, starts, ends)
    return out[:count]


def _jumps_are_cheaper(steps: int, n_chunks: int, count: int, bit_length: int) -> bool:
    """Cost model (ns, measured on numpy 2): one Python step per symbol of a chunk, against
    log2(steps) vectorized pointer-jumping rounds over every bit position."""
    sweep = steps * (12_000 + 30 * n_chunks)
    jumps = max(1, (steps - 1).bit_length()) * (15 * bit_length + 10 * count) + 20 * bit_length
    return jumps < sweep


def _decode_by_jumps(
    window: np.ndarray,
    mask: np.uint32,
    lut_symbol: np.ndarray,
    lut_length: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    count: int,
    chunk_size: int,
) -> np.ndarray:
    """Decode by pointer jumping: the code starting at every bit position gives that position's
    successor; symbol i of a chunk starts at the i-th successor of the chunk's start, found by
    composing successor tables squared log2(chunk_size) times. No loop over symbols."""
    bit_length = int(ends[-1])
    sink = bit_length + 1  # where any code running past the end lands, and stays
    position = np.arange(sink + 1, dtype=np.int64)
    successor = position + lut_length[(window[position >> 3] >> (position & 7).astype(np.uint32)) & mask]
    successor[successor > bit_length] = sink
    successor[sink] = sink
    sizes = np.full(starts.size, chunk_size, dtype=np.int64)
    sizes[-1] = count - chunk_size * (starts.size - 1)
    chunk_of = np.repeat(np.arange(starts.size), sizes)
    rank = np.arange(count, dtype=np.int64) - chunk_size * chunk_of
    pos = starts[chunk_of]
    jump = successor
    for bit in range(max(1, int(sizes.max() - 1).bit_length())):
        take = np.flatnonzero((rank >> bit) & 1)
        pos[take] = jump[pos[take]]
        jump = jump[jump]
    last = np.cumsum(sizes) - 1
    _check_chunk_ends(successor[pos[last]], starts, ends)
    return lut_symbol.take((window[pos >> 3] >> (pos & 7).astype(np.uint32)) & mask)


def _check_chunk_ends(reached: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> None:
    """Every chunk must end exactly where the next begins (the last at bit_length)."""
    bad = np.flatnonzero(reached != ends)
    if bad.size:
        chunk = int(bad[0])
        fail(
            FormatError(
                f"chunk {chunk} does not end at bit {int(ends[chunk])}",
                rule="huffman-data",
                offset=int(starts[chunk]) // 8,
            )
        )


def _lookup_table(lengths: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Symbol and length for every max_len-bit peek of an LSB-first stream."""
    used = np.flatnonzero(lengths)
    used_lengths = lengths[used].astype(np.int64)
    reversed_codes = reverse_bits(canonical_codes(lengths)[used], used_lengths).astype(np.int64)
    repeats = np.left_shift(1, max_len - used_lengths)
    group = np.repeat(np.arange(used.size), repeats)
    within = np.arange(group.size) - np.repeat(np.cumsum(repeats) - repeats, repeats)
    index = reversed_codes[group] + (within << used_lengths[group])
    lut_symbol = np.zeros(1 << max_len, dtype=np.uint32)
    lut_length = np.zeros(1 << max_len, dtype=np.int64)
    lut_symbol[index] = used[group]
    lut_length[index] = used_lengths[group]
    return lut_symbol, lut_length


def count_flagged(symbols: np.ndarray, nonzero: np.ndarray | None) -> int:
    """How many symbols ``nonzero`` flags (bincount runs blockwise: it widens to int64)."""
    if nonzero is None:
        return 0
    counts = np.zeros(nonzero.size, dtype=np.int64)
    for start in range(0, symbols.size, _BLOCK):
        counts += np.bincount(symbols[start : start + _BLOCK], minlength=nonzero.size)
    return int(counts @ nonzero.astype(np.int64))


def scatter(gap_symbols: np.ndarray, code_symbols: np.ndarray, values: np.ndarray, out: np.ndarray) -> None:
    """out[position of entry i] = values[code i], positions = cumsum(gap + 1) - 1, blockwise."""
    previous = -1
    for start in range(0, gap_symbols.size, _BLOCK):
        positions = np.add(gap_symbols[start : start + _BLOCK], 1, dtype=np.int64)
        np.cumsum(positions, out=positions)
        positions += previous
        out[positions] = values[code_symbols[start : start + _BLOCK]]
        previous = int(positions[-1])
