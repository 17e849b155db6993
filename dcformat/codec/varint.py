"""LEB128 varints of relative indices (outlier positions, spec 5.7), vectorized both ways."""

from __future__ import annotations

import numpy as np

from ..errors import FormatError, stop

MAX_BYTES = 8  # 8 x 7 bits hold every gap below 2^56, the element limit


def encode_gaps(positions: np.ndarray) -> bytes:
    """Strictly increasing positions as the LEB128 varints of their gaps ``p_i - p_{i-1} - 1``."""
    gaps = np.diff(np.asarray(positions, dtype=np.int64), prepend=-1).astype(np.uint64) - np.uint64(1)
    sizes = np.maximum(1, -(-_bit_length(gaps) // 7))
    out = np.zeros(int(sizes.sum()), dtype=np.uint8)
    starts = np.cumsum(sizes) - sizes
    for k in range(MAX_BYTES):  # byte k of every varint that has one
        has = sizes > k
        byte = (gaps[has] >> np.uint64(7 * k)) & np.uint64(0x7F)
        more = (sizes[has] > k + 1).astype(np.uint64) << np.uint64(7)
        out[starts[has] + k] = (byte | more).astype(np.uint8)
    return out.tobytes()


def decode_positions(data: np.ndarray, count: int, numel: int, rule: str) -> np.ndarray:
    """Positions from ``count`` minimal LEB128 gaps that fill ``data`` exactly, each below
    ``numel``; FormatError under ``rule`` otherwise."""
    data = np.asarray(data, dtype=np.uint8)
    ends = np.flatnonzero(data < 0x80)
    if ends.size != count or (count and ends[-1] != data.size - 1) or (not count and data.size):
        stop(FormatError(f"{data.size} position bytes do not hold exactly {count} varints", rule=rule))
    if not count:
        return np.zeros(0, dtype=np.int64)
    starts = np.concatenate(([0], ends[:-1] + 1))
    sizes = ends - starts + 1
    if sizes.max() > MAX_BYTES or np.any((data[ends] == 0) & (sizes > 1)):
        stop(FormatError(f"a position varint is over {MAX_BYTES} bytes or not minimal", rule=rule))
    shift = (np.arange(data.size) - np.repeat(starts, sizes)).astype(np.uint64) * np.uint64(7)
    gaps = np.add.reduceat((data & 0x7F).astype(np.uint64) << shift, starts)
    positions = np.cumsum(gaps + np.uint64(1), dtype=np.uint64)  # a wrap shows as a decrease
    if np.any(positions[1:] <= positions[:-1]) or positions[-1] > np.uint64(numel):
        stop(FormatError(f"outlier positions run past the tensor's {numel} elements", rule=rule))
    return positions.astype(np.int64) - 1


def _bit_length(values: np.ndarray) -> np.ndarray:
    bits = np.zeros(values.shape, dtype=np.int64)
    rest = values.copy()
    for step in (32, 16, 8, 4, 2, 1):
        big = rest >= (np.uint64(1) << np.uint64(step))
        bits[big] += step
        rest[big] >>= np.uint64(step)
    return bits + (rest > 0)
