"""Error feedback (GPTQ, Frantar et al. 2022) for codebook quantization of a layer's weights.

A layer computes y = W x. Given calibration inputs, H = Σ x xᵀ over them, the output error of
a change ΔW is Σ_i ΔW_i H ΔW_iᵀ (rows i). Rounding each weight to its nearest centroid ignores
H; GPTQ codes the columns (inputs) one at a time and moves the error of each over the columns
not yet coded, through the Cholesky factor of the damped H⁻¹, so that correlated inputs make
up for each other. The codes stay in the given codebook (times each row's scale), so the file
format does not change; only which centroid each weight takes.

Columns are coded in the order of decreasing H_ii (the paper's "act order"). An input that
calibration never drives (H_ii = 0) gets H_ii = 1: its weights take their nearest centroid
and pass no error on. Several codebooks of one layer (the rows of several settings stacked)
are coded in one pass over the columns.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DAMP = 0.01  # added to H's diagonal, as a fraction of its mean (the paper's 1%)
BLOCK = 128  # columns whose updates are applied to the rest at once (the paper's lazy batches)


def inverse_factor(hessian: np.ndarray, damp: float = DAMP) -> tuple[np.ndarray, np.ndarray]:
    """The column order (decreasing H_ii) and the upper Cholesky factor U of the damped H⁻¹
    in that order (H⁻¹ = UᵀU), as :func:`quantize` takes them."""
    h = np.array(hessian, dtype=np.float64)
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise ValueError(f"a Hessian must be square, got shape {h.shape}")
    diag = np.diag(h).copy()
    dead = diag <= 0
    h[dead, :] = 0
    h[:, dead] = 0
    h[dead, dead] = 1
    order = np.argsort(-np.diag(h), kind="stable")
    h = h[np.ix_(order, order)]
    mean = float(np.mean(np.diag(h))) if h.size else 1.0
    for attempt in range(6):  # more damping where rounding leaves H numerically singular
        damped = h + np.eye(len(h)) * damp * 10**attempt * mean
        try:
            lower = np.linalg.cholesky(damped)
            inverse = np.linalg.inv(lower)  # L⁻¹; H⁻¹ = L⁻ᵀ L⁻¹
            factor = np.linalg.cholesky(inverse.T @ inverse).T
            return order, factor
        except np.linalg.LinAlgError:
            continue
    raise ValueError("the Hessian is not positive definite even with damping")


def quantize(
    weights: np.ndarray,
    codebooks: Sequence[np.ndarray],
    rows_of: Sequence[int],
    order: np.ndarray,
    factor: np.ndarray,
    scales: np.ndarray | None = None,
    fixed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Codes of ``weights`` (rows, columns) by error feedback: row r takes codebook
    ``codebooks[g]`` for the g-th run of ``rows_of[g]`` rows, its decoded value
    codebook[code] × ``scales[r]`` (1 without scales). ``fixed`` (rows, columns, bool): weights
    whose code is 0 whatever their value (a zero symbol's exact zeros); the other weights take
    codes of the other centroids then. ``order`` and ``factor`` are :func:`inverse_factor`'s.
    Returns int64 codes (rows, columns) and each row's output error ΔW_r H ΔW_rᵀ (H damped as
    the factor's, in scaled units: times scales[r]² in the weights')."""
    w = np.asarray(weights, dtype=np.float64)
    rows, cols = w.shape
    factor = np.asarray(factor, dtype=np.float32)
    if sum(rows_of) != rows or len(rows_of) != len(codebooks):
        raise ValueError("rows_of must split the rows among the codebooks")
    if len(order) != cols or factor.shape != (cols, cols):
        raise ValueError(f"the factor is for {len(order)} columns; the weights have {cols}")
    nearest = _Nearest(codebooks, rows_of, fixed is not None)
    s = np.ones(rows) if scales is None else np.asarray(scales, dtype=np.float64).reshape(-1)
    w = np.asfortranarray(w[:, order] / s[:, None], dtype=np.float32)  # in scaled units, by column
    held = None if fixed is None else np.asarray(fixed, dtype=bool)[:, order]
    codes = np.zeros((rows, cols), dtype=np.int64)
    loss = np.zeros(rows)
    for first in range(0, cols, BLOCK):
        stop = min(first + BLOCK, cols)
        errors = np.zeros((rows, stop - first), dtype=np.float32, order="F")
        u = factor[first:stop, first:stop]
        for j in range(stop - first):  # the errors of the block's earlier columns, applied lazily
            column = w[:, first + j] - errors[:, :j] @ u[:j, j]
            code, value = nearest(column, None if held is None else held[:, first + j])
            codes[:, first + j] = code
            error = ((column - value) / u[j, j]).astype(np.float32)
            errors[:, j] = error
            loss += np.square(error, dtype=np.float64)
        w[:, stop:] -= errors @ factor[first:stop, stop:]
    out = np.empty_like(codes)
    out[:, order] = codes
    return out, loss


class _Nearest:
    """Each row's nearest centroid of its own codebook, for a column of all rows at once: the
    codebooks sorted and laid end to end, each shifted past the one before, so that one
    ``searchsorted`` serves all of them."""

    def __init__(self, codebooks: Sequence[np.ndarray], rows_of: Sequence[int], zero_symbol: bool) -> None:
        self.skip = int(zero_symbol)  # code 0 is the zero symbol: the others are searched
        books = [np.asarray(c, dtype=np.float64).reshape(-1) for c in codebooks]
        if any(len(b) <= self.skip for b in books):
            raise ValueError("a codebook holds no centroid to code with")
        span = max(float(np.max(np.abs(b))) for b in books) * 4 + 1.0
        values, exact, codes, shifts, lows, highs = [], [], [], [], [], []
        start = 0
        for g, book in enumerate(books):
            rank = np.argsort(book[self.skip :], kind="stable") + self.skip
            values.append(book[rank] + g * span)
            exact.append(book[rank])
            codes.append(rank)
            shifts.append(np.full(rows_of[g], g * span))
            lows.append(np.full(rows_of[g], start))
            start += len(rank)
            highs.append(np.full(rows_of[g], start - 1))
        self.values = np.concatenate(values)
        self.exact = np.concatenate(exact)
        self.codes = np.concatenate(codes)
        self.shift = np.concatenate(shifts)
        self.low = np.concatenate(lows)
        self.high = np.concatenate(highs)

    def __call__(self, column: np.ndarray, held: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The codes and decoded (scaled-unit) values of one column."""
        target = column + self.shift
        above = np.clip(np.searchsorted(self.values, target), self.low + 1, self.high)
        below = np.maximum(above - 1, self.low)
        above = np.minimum(above, self.high)
        pick = np.where(
            np.abs(self.values[above] - target) < np.abs(self.values[below] - target), above, below
        )
        code = self.codes[pick]
        value = self.exact[pick]
        if held is not None:
            code = np.where(held, 0, code)
            value = np.where(held, 0.0, value)
        return code, value
