"""Relative indices with padding-zero fillers (spec section 5), vectorized.

Stored entry i carries gap_i = pos_i - pos_{i-1} - 1 (pos_{-1} = -1) in index_bits b.
A gap above 2^b - 1 is bridged by filler entries (gap 2^b - 1, code 0), each covering
2^b positions, so a real gap g becomes g >> b fillers and a remaining gap g mod 2^b.
"""

from __future__ import annotations

import numpy as np

from ..layout import MAX_CODE_LENGTH
from . import huffman


def real_gaps(positions: np.ndarray) -> np.ndarray:
    """Gaps between strictly increasing flat positions, before any filler (int64)."""
    positions = np.asarray(positions, dtype=np.int64)
    return np.diff(positions, prepend=-1) - 1


def with_fillers(
    positions: np.ndarray, codes: np.ndarray, index_bits: int, numel: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Entries (gaps, codes) for stored positions, fillers inserted where gaps overflow.

    With ``numel``, trailing fillers also cover the zeros after the last position
    (writers add them only to keep a tensor within the expansion limit).
    """
    codes = np.asarray(codes)
    gaps = real_gaps(positions)
    fillers = gaps >> index_bits
    last = int(positions[-1]) if len(positions) else -1
    tail = 0 if numel is None else (numel - 1 - last) >> index_bits
    # Real entry i lands after the fillers of entries 0..i.
    slot = np.arange(gaps.size) + np.cumsum(fillers)
    total = gaps.size + int(fillers.sum()) + tail
    out_gaps = np.full(total, (1 << index_bits) - 1, dtype=np.int64)
    out_codes = np.zeros(total, dtype=codes.dtype)
    out_gaps[slot] = gaps & ((1 << index_bits) - 1)
    out_codes[slot] = codes
    return out_gaps, out_codes


def positions_of(gaps: np.ndarray) -> np.ndarray:
    """Flat positions of entries from their gaps: cumsum(gap + 1) - 1 (int64)."""
    return np.cumsum(np.asarray(gaps, dtype=np.int64) + 1) - 1


def best_index_bits(positions: np.ndarray, codes: np.ndarray, alphabet: int) -> int:
    """The index_bits in 1..16 giving the fewest bits for both Huffman streams and tables."""
    gaps = real_gaps(positions)
    code_freqs = np.bincount(np.asarray(codes, dtype=np.int64), minlength=alphabet)
    if gaps.size == 0:
        return 1
    widest = min(MAX_CODE_LENGTH, max(1, int(gaps.max()).bit_length()))
    best, best_cost = 1, None
    for bits in range(1, widest + 1):
        fillers = gaps >> bits
        n_fill = int(fillers.sum())
        gap_freqs = np.bincount(gaps & ((1 << bits) - 1), minlength=1 << bits)
        gap_freqs[-1] += n_fill
        freqs = code_freqs.copy()
        freqs[0] += n_fill
        cost = (
            huffman.encoded_bits(gap_freqs, huffman.code_lengths(gap_freqs))
            + huffman.encoded_bits(freqs, huffman.code_lengths(freqs))
            + 8 * (1 << bits)  # the gap table: a byte per symbol in the header
        )
        if best_cost is None or cost < best_cost:
            best, best_cost = bits, cost
    return best
