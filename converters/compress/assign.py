"""Nearest-centroid assignment of many weights: ``np.searchsorted`` exactly, several times faster.

A binary search per weight costs about 190 ns on a 1M-weight block with 255 boundaries
(branchy, data-dependent). Here a table over TABLE_BINS equal bins between the first and
the last boundary guesses each weight's code in a few vectorized passes; one step up and
one down fix a guess a boundary inside its bin made wrong; weights still wrong after that
(several boundaries in one bin) take the binary search. The result equals
``np.searchsorted(boundaries, values, side="right")`` for every input, comparisons
being made as that makes them (float64 boundaries, values widened).
"""

from __future__ import annotations

import numpy as np

TABLE_BINS = 1 << 12
MIN_VALUES = 1 << 14  # below this the binary search is as fast
FLOAT32_SAFE = 1e37  # the estimate's operands stay far from float32 overflow (inf - inf)


def assign(boundaries: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``np.searchsorted(boundaries, values, side="right")`` for sorted float64 ``boundaries``
    and finite float ``values`` (any float dtype; float16 and bfloat16-as-float32 included)."""
    k = boundaries.size
    if values.size < MIN_VALUES or k < 2 or not boundaries[-1] > boundaries[0]:
        return np.searchsorted(boundaries, values, side="right")
    first, last = float(boundaries[0]), float(boundaries[-1])
    scale = TABLE_BINS / (last - first)
    if max(abs(first), abs(last), scale) > FLOAT32_SAFE:  # the float32 estimate would overflow
        return np.searchsorted(boundaries, values, side="right")
    starts = first + np.arange(TABLE_BINS + 1) / scale
    table = np.searchsorted(boundaries, starts, side="right").astype(np.int32)
    with np.errstate(over="ignore"):  # huge values become inf, then the last bin
        guess = values.astype(np.float32, copy=True)  # an estimate: exactness comes from the checks
        guess -= np.float32(first)
        guess *= np.float32(scale)
    np.clip(guess, 0, TABLE_BINS, out=guess)
    codes = table[guess.astype(np.int32)]
    edges = np.concatenate([[-np.inf], boundaries, [np.inf]])  # code c holds edges[c] <= v < edges[c + 1]
    codes += values >= edges[codes + 1]
    codes -= values < edges[codes]
    wrong = np.flatnonzero((values < edges[codes]) | (values >= edges[codes + 1]))
    if wrong.size:
        codes[wrong] = np.searchsorted(boundaries, values[wrong], side="right")
    return codes
