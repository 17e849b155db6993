"""Weight sharing whose precision follows how often each row is used: lookup tables.

A row of an embedding table only matters when its token occurs, and tokens occur with Zipf's
skew: in all-MiniLM-L6-v2's 30,522-row table, the 2,000 most frequent tokens of a text are about
90% of the tokens of another. Plain sharing spends the same bits on every row. Here each row
gets its own quantization step, the row scale of format 1.1 (spec 5.6), over one shared
uniform codebook: with ``counts[r]`` uses of row r, minimizing the expected squared error of the
rows looked up, sum_r counts[r] * D_r, for a given entropy gives D_r proportional to
1 / counts[r] (reverse water-filling), so the step (D ~ step^2 / 12) goes as
1 / sqrt(counts[r] + 1) (one use added to each row: a row never seen still counts).

Two rules bound it, and no constant is fitted to a model:
- no row is coarser than plain sharing at the same bits: the step is capped at the uniform
  step with the k-means codebook's error (``sqrt(12 * D_plain)``), so rows never counted keep
  about plain sharing's quality;
- the codes' entropy equals that of plain sharing at the same bits: the scale of the steps is
  solved for it, so the file stays the size plain sharing would give (one Huffman table serves
  every row, so frequent rows pay for spreading over more codebook values).

Each row's step is also at least its largest ``|w| / rms`` over :data:`HALF_LEVELS`, so its
values fit the codebook of at most 2 * HALF_LEVELS + 1 values (uint8 codes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from converters.compress.finetune import row_magnitudes
from converters.compress.share import SharedTensor, share_weights

HALF_LEVELS = 127  # codebook values -127..127 steps: 255 of them, uint8 codes
SEARCH_STEPS = 40  # bisection steps on the scale of the row steps


def _entropy(levels: np.ndarray) -> float:
    counts = np.bincount((levels - levels.min()).reshape(-1))
    p = counts[counts > 0] / levels.size
    return float(-(p * np.log2(p)).sum())


def usage_sharing(
    values: np.ndarray, rows: int, bits: int, counts: np.ndarray, **kmeans: Any
) -> tuple[SharedTensor, np.ndarray]:
    """The shared tensor of ``values`` (flat, ``rows`` rows) on a uniform codebook, each row's
    step set by its use ``counts`` (one value >= 0 per row), and the float16 row scales, as
    :func:`~converters.compress.finetune.scaled_sharing` returns them; the codes' entropy is that
    of plain sharing at ``bits`` (``kmeans`` goes to its k-means)."""
    use = np.asarray(counts, dtype=np.float64).reshape(-1)
    if use.shape != (rows,) or not np.isfinite(use).all() or (use < 0).any():
        raise ValueError(f"row counts must be {rows} finite values >= 0, got shape {np.shape(counts)}")
    w = np.asarray(values, dtype=np.float64).reshape(rows, -1)
    rms = row_magnitudes(w, rows)
    z = w / rms[:, None]
    plain = share_weights(z.reshape(-1).astype(np.float32), bits, **kmeans)
    plain_error = float(np.mean(np.square(plain.decode().astype(np.float64) - z.reshape(-1))))
    target = _entropy(plain.codes.astype(np.int64))
    coarsest = np.sqrt(12 * plain_error)
    finest = np.maximum(np.abs(z).max(1) / HALF_LEVELS, np.finfo(np.float32).tiny)
    weight = 1 / np.sqrt(use + 1)

    def steps(scale: float) -> np.ndarray:
        return np.maximum(np.minimum(coarsest, scale * weight), finest)

    def levels(step: np.ndarray) -> np.ndarray:
        return np.rint(z / step[:, None]).astype(np.int64)

    # The entropy falls as the scale grows: find the smallest scale within the target.
    low, high = 1e-6 * coarsest, coarsest / weight.min()
    for _ in range(SEARCH_STEPS):
        middle = np.sqrt(low * high)
        if _entropy(levels(steps(middle))) > target:
            low = middle
        else:
            high = middle
    step = steps(high) * rms
    unit = float(step.mean())
    scales = (step / unit).astype(np.float16)
    if not (np.isfinite(scales).all() and (scales > 0).all()):
        raise ValueError("row steps do not fit float16 scales")
    # Codes from the scales as stored, so that codebook[code] * scale is the nearest level.
    n = np.clip(np.rint(w / (unit * scales.astype(np.float64)[:, None])), -HALF_LEVELS, HALF_LEVELS)
    n = n.astype(np.int64)
    low_level, high_level = int(n.min()), int(n.max())
    codebook = (np.arange(low_level, high_level + 1) * unit).astype(np.float32)
    codes = (n - low_level).astype(np.uint8).reshape(-1)
    return SharedTensor(codebook, codes, zero_symbol=False).compact(), scales
