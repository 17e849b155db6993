"""Packed header tables (format 1.2, spec 5.8 and 7.6): a code-length table or a codebook as a
small canonical Huffman stream, vectorized both ways.

Both start with a *mini stream*: varint ``count``, varint ``bit_length``, one byte ``n``, the
first ``n`` code lengths of its alphabet at 3 bits each (LSB first), then ``bit_length`` bits of
symbols coded as spec section 7 (one chunk). A table's symbols are delta-coded lengths and runs
of unused symbols; a codebook's are the bit lengths of key deltas (an escape before each negative
one), whose remaining bits follow in an extra-bits area. Unpacking is one call into the native
extension when it is built (it accepts only input that follows every rule here); otherwise, and for
any input it does not accept, the numpy code below runs the stream decoders on the symbols and
raises the error: every one a FormatError under the caller's rule.
"""

from __future__ import annotations

import numpy as np

from ..errors import FormatError, stop
from ..layout import MAX_ALPHABET
from . import decode as codec
from . import huffman
from .huffman import Stream

MAX_LENGTH = 7  # code lengths of a mini stream fit 3 bits
TABLE_ALPHABET = 33  # 0: one unused symbol; 1..16: a used length (delta); 16+j: 2^j unused
BOOK_ALPHABET = 34  # the bit length (0..32) of a key delta's magnitude; 33: the next delta is negative
NEGATE = 33
_VARINT_BYTES = 3  # counts and bit lengths here stay below 2^21


def pack_table(lengths: np.ndarray) -> bytes:
    """The packed form of a code-length table (uint8, 1..65536 entries)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    used = np.flatnonzero(lengths)
    previous = np.concatenate(([0], lengths[used][:-1]))
    delta = (lengths[used] - previous) % 16 + 1
    # zero runs: their binary digits, high first; bit 0 is symbol 0, bit j >= 1 is symbol 16 + j
    is_zero = lengths == 0
    edges = np.flatnonzero(np.diff(np.concatenate(([0], is_zero.astype(np.int8), [0]))))
    run_starts, run_lengths = edges[0::2], edges[1::2] - edges[0::2]
    bits = np.arange(16, -1, -1)
    has = (run_lengths[:, None] >> bits[None, :]) & 1 == 1
    run_symbols = np.where(bits == 0, 0, 16 + bits)[None, :].repeat(run_starts.size, 0)[has]
    run_pos = np.repeat(run_starts, has.sum(1))
    run_rank = np.broadcast_to(np.arange(bits.size), has.shape)[has]
    pos = np.concatenate((used, run_pos))
    rank = np.concatenate((np.zeros(used.size, np.int64), run_rank))
    symbols = np.concatenate((delta, run_symbols))[np.lexsort((rank, pos))]
    return _pack_stream(symbols, TABLE_ALPHABET)


def unpack_table(data: bytes, rule: str) -> np.ndarray:
    """The code-length table (uint8) a packed table holds, after every rule of spec 7.6."""
    fast = _native_unpack(data, 0)
    if fast is not None:
        return np.frombuffer(fast, dtype=np.uint8).copy()
    symbols, end = _unpack_stream(data, TABLE_ALPHABET, rule)
    if end != len(data):
        stop(FormatError(f"{len(data) - end} bytes after a packed table", rule=rule))
    counts = np.where(symbols > 16, 1 << np.maximum(symbols.astype(np.int64) - 16, 0), 1)
    total = int(counts.sum())
    if total > MAX_ALPHABET:
        stop(FormatError(f"a packed table expands to {total} lengths, over {MAX_ALPHABET}", rule=rule))
    used = (symbols >= 1) & (symbols <= 16)
    steps = symbols[used].astype(np.int64) - 1
    out = np.zeros(total, dtype=np.uint8)
    out[(np.cumsum(counts) - counts)[used]] = (np.cumsum(steps) - 1) % 16 + 1
    return out


def pack_codebook(values: np.ndarray) -> bytes:
    """The packed form of codebook values (float32 or float16, 1..65536 of them)."""
    width = values.dtype.itemsize * 8
    keys = _keys(values.view(np.uint32 if width == 32 else np.uint16).astype(np.int64), width)
    deltas = np.diff(keys, prepend=1 << (width - 1))  # the key of +0.0 before the first
    magnitudes = np.abs(deltas).astype(np.uint64)
    lengths = _bit_length(magnitudes)
    negative = np.flatnonzero(deltas < 0)
    buckets = np.insert(lengths, negative, NEGATE)  # the escape goes just before its delta
    widths = np.maximum(lengths - 1, 0).astype(np.uint64)
    extra = magnitudes & ((np.uint64(1) << widths) - np.uint64(1))
    total = int(widths.sum())
    words = np.zeros(total // 64 + 2, dtype="<u8")
    if total:
        huffman._pack_into(words, extra, np.cumsum(widths) - widths)
    return _pack_stream(buckets, BOOK_ALPHABET) + words.view(np.uint8)[: -(-total // 8)].tobytes()


def unpack_codebook(data: bytes, itemsize: int, rule: str) -> bytes:
    """The little-endian codebook values (``itemsize`` 4 or 2 bytes each) a packed codebook
    holds, after every rule of spec 5.8."""
    fast = _native_unpack(data, itemsize)
    if fast is not None:
        return fast
    symbols, end = _unpack_stream(data, BOOK_ALPHABET, rule, 2 * MAX_ALPHABET)
    escape = symbols == NEGATE
    negated = np.zeros(symbols.size, dtype=bool)
    negated[1:] = escape[:-1]
    if escape[-1] or np.any(negated & ((symbols == 0) | escape)):
        stop(FormatError("a packed codebook's negation is not followed by a nonzero delta", rule=rule))
    lengths = symbols[~escape].astype(np.int64)
    if lengths.size > MAX_ALPHABET:
        stop(FormatError(f"a packed codebook of {lengths.size} values, over {MAX_ALPHABET}", rule=rule))
    widths = np.maximum(lengths - 1, 0)
    total = int(widths.sum())
    if len(data) - end != -(-total // 8):
        stop(FormatError(f"{len(data) - end} extra-bit bytes for {total} bits", rule=rule))
    area = np.frombuffer(data, dtype=np.uint8, offset=end)
    if total & 7 and area[-1] >> (total & 7):
        stop(FormatError("padding bits after a packed codebook are not zero", rule=rule))
    starts = np.cumsum(widths) - widths
    padded = np.concatenate((area, np.zeros(8, np.uint8))).astype(np.uint64)
    index = (starts >> 3)[:, None] + np.arange(8)[None, :]
    window = np.bitwise_or.reduce(padded[index] << (np.arange(8, dtype=np.uint64) * np.uint64(8)), axis=1)
    extra = (window >> (starts & 7).astype(np.uint64)) & (
        (np.uint64(1) << widths.astype(np.uint64)) - np.uint64(1)
    )
    lead = np.where(lengths > 0, np.uint64(1) << widths.astype(np.uint64), np.uint64(0))
    magnitudes = (lead | extra).astype(np.int64)
    deltas = np.where(negated[~escape], -magnitudes, magnitudes)
    width = itemsize * 8
    keys = (1 << (width - 1)) + np.cumsum(deltas)
    if np.any((keys < 0) | (keys >= 1 << width)):
        stop(FormatError(f"a packed codebook value leaves the {width}-bit range", rule=rule))
    bits = _keys(keys, width, inverse=True)
    return bits.astype(f"<u{itemsize}").tobytes()


def _native_unpack(data: bytes, itemsize: int) -> bytes | None:
    """The native unpacking of a table (``itemsize`` 0) or codebook, or None where it is not built,
    is switched off, or does not accept the input."""
    return codec._native.unpack(data, itemsize) if codec.enabled() else None


def _keys(values: np.ndarray, width: int, inverse: bool = False) -> np.ndarray:
    """Order-preserving keys of float bit patterns (sign bit flipped for positives, all bits for
    negatives), or back."""
    top, mask = 1 << (width - 1), (1 << width) - 1
    negative = (values < top) if inverse else (values >= top)
    return np.where(negative, values ^ mask, values ^ top)


def _pack_stream(symbols: np.ndarray, alphabet: int) -> bytes:
    freqs = np.bincount(symbols, minlength=alphabet)
    lengths = huffman.code_lengths(freqs, MAX_LENGTH)
    stream = huffman.encode(symbols, lengths, max(1, symbols.size), freqs)
    listed = int(np.flatnonzero(lengths)[-1]) + 1
    fields = np.zeros(-(-3 * listed // 8) * 8, dtype=np.uint8)
    for bit in range(3):
        fields[bit : 3 * listed : 3] = (lengths[:listed] >> bit) & 1
    table = np.packbits(fields, bitorder="little").tobytes()
    head = _varint(symbols.size) + _varint(stream.bit_length) + bytes([listed])
    return head + table + stream.data.tobytes()


def _unpack_stream(
    data: bytes, alphabet: int, rule: str, max_count: int = MAX_ALPHABET
) -> tuple[np.ndarray, int]:
    """The symbols of the mini stream at the start of ``data``, and where it ends."""
    count, pos = _read_varint(data, 0, rule)
    bit_length, pos = _read_varint(data, pos, rule)
    if not 1 <= count <= max_count:
        stop(FormatError(f"a packed table of {count} symbols, not 1..{max_count}", rule=rule))
    if pos >= len(data) or not 1 <= data[pos] <= alphabet:
        stop(FormatError(f"a packed table lists 1..{alphabet} code lengths", rule=rule))
    listed = data[pos]
    table_end = pos + 1 + -(-3 * listed // 8)
    if table_end > len(data):
        stop(FormatError("a packed table ends inside its code lengths", rule=rule))
    fields = np.unpackbits(np.frombuffer(data, np.uint8, table_end - pos - 1, pos + 1), bitorder="little")
    lengths = np.zeros(alphabet, dtype=np.uint8)
    lengths[:listed] = (
        fields[0 : 3 * listed : 3] | fields[1 : 3 * listed : 3] << 1 | fields[2 : 3 * listed : 3] << 2
    )
    if fields[3 * listed :].any():
        stop(FormatError("padding bits after packed code lengths are not zero", rule=rule))
    try:
        huffman.check_table(lengths, count)
    except FormatError as exc:
        stop(FormatError(f"packed table: {exc.message}", rule=rule))
    used = lengths[lengths > 0]
    if not count * int(used.min()) <= bit_length <= count * int(used.max()):
        stop(FormatError(f"{bit_length} bits cannot hold {count} symbols", rule=rule))
    end = table_end + -(-bit_length // 8)
    if end > len(data):
        stop(FormatError("a packed table ends inside its symbols", rule=rule))
    stream = Stream(
        np.frombuffer(data, np.uint8, end - table_end, table_end).copy(),
        bit_length,
        count,
        lengths,
        count,
        np.zeros(0, np.uint64),
    )
    try:
        symbols = codec.decode_symbols(stream)
    except FormatError as exc:
        stop(FormatError(f"packed table: {exc.message}", rule=rule))
    return symbols, end


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int, rule: str) -> tuple[int, int]:
    """A minimal LEB128 varint of at most 3 bytes at ``pos``, and the position after it."""
    value = 0
    for k in range(_VARINT_BYTES):
        if pos + k >= len(data):
            break
        byte = data[pos + k]
        value |= (byte & 0x7F) << (7 * k)
        if byte < 0x80:
            if byte == 0 and k:
                break
            return value, pos + k + 1
    stop(FormatError("a packed table's varint is cut short, over 3 bytes or not minimal", rule=rule))


def _bit_length(values: np.ndarray) -> np.ndarray:
    bits = np.zeros(values.shape, dtype=np.int64)
    rest = values.astype(np.uint64)
    for step in (32, 16, 8, 4, 2, 1):
        big = rest >= (np.uint64(1) << np.uint64(step))
        bits[big] += step
        rest[big] >>= np.uint64(step)
    return bits + (rest > 0)
