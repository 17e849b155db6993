"""Nearest-centroid assignment of many weights: ``np.searchsorted`` exactly, several times faster.

A binary search per weight costs about 190 ns on a 1M-weight block with 255 boundaries
(branchy, data-dependent). Here a table over TABLE_BINS equal bins between the first and
the last boundary guesses each weight's code in a few vectorized passes; one step up and
one down fix a guess a boundary inside its bin made wrong; weights still wrong after that
(several boundaries in one bin) take the binary search. The result equals
``np.searchsorted(boundaries, values, side="right")`` for every input, comparisons
being made as that makes them (float64 boundaries, values widened).

The C kernel ``converters.compress._assign`` (``_assign.c``) does the same in one pass when it
is built (``DCNN_NO_NATIVE=1`` forces the numpy code, which it must match exactly).
"""

from __future__ import annotations

import os

import numpy as np

try:
    from . import _assign as _native
except ImportError:  # built without a compiler: numpy does the work
    _native = None

BLOCK = 1 << 20  # values coded at a time by the numpy path of nearest_codes
TABLE_BINS = 1 << 12
MIN_VALUES = 1 << 14  # below this the binary search is as fast
FLOAT32_SAFE = 1e37  # the estimate's operands stay far from float32 overflow (inf - inf)


def native() -> bool:
    """Whether assignment goes through the C kernel (built, and not DCNN_NO_NATIVE=1)."""
    return _native is not None and os.environ.get("DCNN_NO_NATIVE", "") in ("", "0")


def _native_values(boundaries: np.ndarray, values: np.ndarray) -> np.ndarray | None:
    """``values`` as the C kernel takes them (contiguous float32/float64; float16 widens
    exactly), or None where the numpy path must run."""
    if not native() or boundaries.dtype != np.float64 or values.dtype.kind != "f":
        return None
    if values.dtype == np.float16:
        values = values.astype(np.float32)
    return np.ascontiguousarray(values) if values.dtype in (np.float32, np.float64) else None


def assign(boundaries: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``np.searchsorted(boundaries, values, side="right")`` for sorted float64 ``boundaries``
    and finite float ``values`` (any float dtype; float16 and bfloat16-as-float32 included)."""
    flat = _native_values(boundaries, values)
    if flat is not None and np.dtype(np.intp).itemsize == 8:
        out = np.empty(values.shape, dtype=np.intp)
        _native.codes(np.ascontiguousarray(boundaries), flat, flat.itemsize, out, 8, False)
        return out
    return assign_numpy(boundaries, np.asarray(values).reshape(-1)).reshape(np.shape(values))


def nearest_codes(
    boundaries: np.ndarray, values: np.ndarray, dtype: type[np.unsignedinteger], zero_symbol: bool
) -> np.ndarray:
    """Flat codes (``dtype``, uint8 or uint16) of flat ``values``: :func:`assign`'s, plus 1 with
    ``zero_symbol``, where exact zeros get 0. Bounded temporaries (blocks of BLOCK values)."""
    codes = np.empty(values.size, dtype=dtype)
    flat = _native_values(boundaries, values)
    if flat is not None:
        bounds = np.ascontiguousarray(boundaries)
        _native.codes(bounds, flat, flat.itemsize, codes, codes.itemsize, zero_symbol)
        return codes
    for first in range(0, values.size, BLOCK):
        block = values[first : first + BLOCK]
        out = codes[first : first + BLOCK]
        out[:] = assign_numpy(boundaries, block)
        if zero_symbol:
            out += 1
            out[block == 0] = 0
    return codes


def stored_codes(
    boundaries: np.ndarray, stored: np.ndarray, dtype: type[np.unsignedinteger], zero_symbol: bool
) -> np.ndarray:
    """:func:`nearest_codes` of the values of 16-bit floats given in their stored form (flat:
    float16, or uint16 holding bfloat16 bits): the code of each of the 65536 values, once, then
    a table lookup per element. A code depends on the value alone, so these are the codes of
    the values widened to float32."""
    table_values = every_value(stored.dtype)
    table_values[~np.isfinite(table_values)] = 0  # NaN and infinities: never looked up (finite weights)
    return lookup(nearest_codes(boundaries, table_values, dtype, zero_symbol), stored.view(np.uint16))


def every_value(stored: np.dtype) -> np.ndarray:
    """The float32 value of each of the 65536 bit patterns of a 16-bit float stored as
    ``stored`` (float16, or uint16 holding bfloat16 bits), indexed by the pattern."""
    every = np.arange(1 << 16, dtype=np.uint16)
    if stored == np.float16:
        return every.view(np.float16).astype(np.float32)
    if stored == np.uint16:
        return (every.astype(np.uint32) << np.uint32(16)).view(np.float32)
    raise ValueError(f"stored values must be float16 or bfloat16 bits (uint16), got {stored}")


def lookup(table: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``table[index]`` for a uint8 or uint16 ``table`` with an entry for every value of the flat
    uint8 or uint16 ``index``, without numpy's index array of 8 bytes per element."""
    out = np.empty(index.size, dtype=table.dtype)
    if native() and table.size == 1 << (8 * index.itemsize):
        _native.lookup(
            np.ascontiguousarray(table), table.itemsize, np.ascontiguousarray(index), index.itemsize, out
        )
        return out
    for first in range(0, index.size, BLOCK):
        out[first : first + BLOCK] = table[index[first : first + BLOCK]]
    return out


def assign_numpy(boundaries: np.ndarray, values: np.ndarray) -> np.ndarray:
    """:func:`assign` in numpy (the fallback of the C kernel)."""
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
