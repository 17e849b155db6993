"""Pick the cheapest .dcnn encoding of a tensor, measured by encoding it: the winner's bytes
go to the writer as they are."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

import dcformat
from dcformat import EncodedTensor, Quantized, Raw

from .share import SharedTensor

RAW_ZSTD_LEVEL = 3  # tensors stored exactly are zstd-compressed when that saves space


def exact(array: np.ndarray, dtype: str) -> Raw:
    """A stored-form array kept exactly (zstd-compressed when that is smaller)."""
    return Raw(array, dtype=dtype, zstd_level=RAW_ZSTD_LEVEL)


def coded(
    shared: SharedTensor,
    shape: tuple[int, ...],
    dtype: str,
    scales: np.ndarray | None = None,
    outliers: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[Quantized]:
    """Dense codes, and sparse codes where zeros abound (format 1.1: ``scales``, one per row;
    ``outliers``, positions and stored values kept exactly over the codes).

    Sparse codes can win only when most codes are the zero symbol: with fewer, a zero symbol
    of about a bit keeps dense codes smaller (measured at 30%, 50% and 60% zeros, 3 to 8 bits).
    """
    options = [Quantized(shared.codebook, shared.codes, shape, dtype=dtype, scales=scales, outliers=outliers)]
    if shared.zero_symbol and 2 * np.count_nonzero(shared.codes) <= shared.codes.size:
        positions = np.flatnonzero(shared.codes)
        options.append(
            Quantized(
                shared.codebook,
                shared.codes[positions],
                shape,
                positions=positions,
                dtype=dtype,
                scales=scales,
                outliers=outliers,
            )
        )
    return options


def _lower_bound(option: Raw | Quantized) -> int:
    """Bytes an option costs at least: dense codes take one Huffman bit or more per element."""
    return option.codes.size // 8 if isinstance(option, Quantized) and not option.sparse else 0


def cheapest(name: str, options: Sequence[Raw | Quantized]) -> EncodedTensor:
    """The encoding of the option costing the fewest bytes in a file (the first on a tie).

    Options that cannot beat the best so far are not encoded.
    """
    best: EncodedTensor | None = None
    best_bytes = 0  # best.stored_bytes (packing the record's tables: computed once each)
    for option in sorted(options, key=_lower_bound):
        if best is not None and _lower_bound(option) >= best_bytes:
            continue
        encoded = dcformat.encode(name, option)
        if best is None:
            best = encoded
            if len(options) > 1:
                best_bytes = encoded.stored_bytes
            continue
        stored_bytes = encoded.stored_bytes
        if stored_bytes < best_bytes:
            best, best_bytes = encoded, stored_bytes
    if best is None:
        raise ValueError("no encoding to choose from")
    return best
