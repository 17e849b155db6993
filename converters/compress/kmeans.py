"""Exact 1-D k-means (Lloyd) on sorted data, with the paper's three centroid initializations.

The weights are sorted once. In 1-D the clusters of sorted centroids are contiguous runs of the
sorted weights, split at the midpoints between neighbouring centroids, so one iteration is a
``searchsorted`` of k-1 boundaries plus prefix-sum differences: O(k log n), not O(n k).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from converters.compress import assign as _assign_module
from converters.compress.assign import assign
from converters.compress.config import INITS, Init

try:
    from converters.compress import _kmeans as _native
except ImportError:  # built without a compiler: numpy does the work
    _native = None


@dataclass(frozen=True)
class KMeansResult:
    """Centroids sorted ascending, each input's cluster label, and the SSE after each iteration."""

    centroids: np.ndarray
    labels: np.ndarray
    distortions: np.ndarray
    converged: bool

    @property
    def iterations(self) -> int:
        """Number of Lloyd iterations run."""
        return len(self.distortions)


def init_centroids(
    sorted_x: np.ndarray, k: int, init: Init, seed: int = 0, cumulative: np.ndarray | None = None
) -> np.ndarray:
    """Initial centroids (float64, ascending) from ascending-sorted data.

    ``linear``: k points evenly spaced over [min, max]. ``density``: the quantiles of the
    weights' CDF at levels (i + 1/2) / k (numpy's linear-interpolation quantile; with
    ``cumulative``, the running sum of the values' importance, the importance-weighted
    quantiles). ``random``: k weights drawn without replacement (with replacement when n < k)
    by ``np.random.default_rng(seed)``.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = len(sorted_x)
    if n == 0:
        raise ValueError("cannot initialize centroids from no data")
    if init == "linear":
        return np.linspace(sorted_x[0], sorted_x[-1], k, dtype=np.float64)
    if init == "density":
        levels = (np.arange(k, dtype=np.float64) + 0.5) / k
        if cumulative is not None and cumulative[-1] > 0:
            at = np.searchsorted(cumulative, levels * cumulative[-1], side="left")
            return sorted_x[np.minimum(at, n - 1)].astype(np.float64)
        position = levels * (n - 1)
        low = np.floor(position).astype(np.int64)
        high = np.minimum(low + 1, n - 1)
        frac = position - low
        lo_v = sorted_x[low].astype(np.float64)
        return lo_v + frac * (sorted_x[high].astype(np.float64) - lo_v)
    rng = np.random.default_rng(seed)
    picked = rng.choice(n, size=k, replace=n < k)
    return np.sort(sorted_x[picked].astype(np.float64))


def kmeans_1d(
    x: np.ndarray,
    k: int,
    *,
    init: Init = "linear",
    max_iter: int = 300,
    seed: int = 0,
    importance: np.ndarray | None = None,
    labels: bool = True,
    ordered: np.ndarray | None = None,
) -> KMeansResult:
    """Cluster the values of ``x`` into ``k`` centroids minimizing the squared error, each
    value's error weighted by its ``importance`` (>= 0, x's shape) when given.

    Stops when an iteration leaves every assignment unchanged or after ``max_iter`` iterations.
    An empty cluster keeps its previous centroid (which keeps the centroids sorted); with
    ``importance``, centroids whose cluster carries no importance are dropped at the end, so
    values that do not matter get no centroid of their own (fewer than k may remain).
    ``labels`` False leaves the result's labels empty (callers that assign other values);
    ``ordered``, ``np.sort`` of the flat values (without importance), saves sorting them.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    values = np.asarray(x).ravel()
    if values.size == 0:
        raise ValueError("cannot initialize centroids from no data")
    if not (np.isfinite(np.min(values)) and np.isfinite(np.max(values))):  # NaN reaches both
        raise ValueError("k-means input contains NaN or infinity")
    if importance is None:
        order = None
        if ordered is None:  # samples come sorted
            ascending = values.size < 2 or bool(np.all(values[1:] >= values[:-1]))
            ordered = values if ascending else np.sort(values)
        xs = np.asarray(ordered, dtype=np.float64)  # read only: float64 input is not copied
        ws = None
    else:
        ws = np.asarray(importance, dtype=np.float64).ravel()
        if ws.shape != values.shape or not np.isfinite(ws).all() or (ws < 0).any():
            raise ValueError("importance must be finite, >= 0 and shaped like the values")
        order = np.argsort(values, kind="stable")
        xs = values[order].astype(np.float64)
        ws = ws[order]
    n = len(xs)
    if ws is None and _native is not None and _assign_module.native():
        # the same iterations in C (_kmeans.c: the same float64 operations in the same order)
        centroids = np.array(init_centroids(xs, k, init, seed), dtype=np.float64)
        distortions = np.empty(max_iter)
        iterations, converged = _native.lloyd(xs, float(xs.mean()), centroids, max_iter, distortions)
        boundaries = (centroids[:-1] + centroids[1:]) / 2
        codes = (
            _labels(boundaries, values, xs if ordered is values else None) if labels else np.zeros(0, np.intp)
        )
        return KMeansResult(centroids, codes, distortions[:iterations], bool(converged))
    # Prefix sums of the centred values keep the per-cluster sums and SSE well conditioned
    # (built in place: three float64 arrays of n in all, four with importance).
    shift = xs.mean() if ws is None or ws.sum() == 0 else float(np.average(xs, weights=ws))
    s1_prefix = np.zeros(n + 1)
    s2_prefix = np.zeros(n + 1)
    np.subtract(xs, shift, out=s1_prefix[1:])
    np.square(s1_prefix[1:], out=s2_prefix[1:])
    if ws is not None:
        s1_prefix[1:] *= ws
        s2_prefix[1:] *= ws
        s0_prefix = np.concatenate(([0.0], np.cumsum(ws)))
    np.cumsum(s1_prefix, out=s1_prefix)
    np.cumsum(s2_prefix, out=s2_prefix)
    centroids = init_centroids(xs, k, init, seed, None if ws is None else s0_prefix[1:])
    edges_prev = None
    distortions = []
    converged = False
    boundaries = (centroids[:-1] + centroids[1:]) / 2
    for _ in range(max_iter):
        edges = np.concatenate(([0], np.searchsorted(xs, boundaries, side="left"), [n]))
        if edges_prev is not None and np.array_equal(edges, edges_prev):
            converged = True
            break
        counts = np.diff(edges) if ws is None else np.diff(s0_prefix[edges])
        s1 = np.diff(s1_prefix[edges])
        s2 = np.diff(s2_prefix[edges])
        filled = counts > 0
        safe = np.where(filled, counts, 1)
        centroids = np.where(filled, s1 / safe + shift, centroids)
        distortions.append(float(np.maximum(s2 - s1 * s1 / safe, 0.0).sum()))
        boundaries = (centroids[:-1] + centroids[1:]) / 2
        edges_prev = edges
    if ws is not None:
        edges = np.concatenate(([0], np.searchsorted(xs, boundaries, side="left"), [n]))
        mass = np.diff(s0_prefix[edges])
        if mass.sum() > 0 and not (mass > 0).all():
            centroids = centroids[mass > 0]
            boundaries = (centroids[:-1] + centroids[1:]) / 2
    # side="right" on the boundaries puts values equal to a boundary in the upper cluster,
    # exactly like side="left" on the sorted values above.
    # np.searchsorted(boundaries, values, side="right"), faster
    sorted_input = xs if order is None and ordered is values else None
    codes = _labels(boundaries, values, sorted_input) if labels else np.zeros(0, dtype=np.intp)
    return KMeansResult(centroids, codes, np.asarray(distortions), converged)


def _labels(boundaries: np.ndarray, values: np.ndarray, xs: np.ndarray | None) -> np.ndarray:
    """``assign(boundaries, values)``; where the values came sorted (``xs``, them as float64),
    as runs: the values from the first >= a boundary on are in the next cluster."""
    if xs is None:
        return assign(boundaries, values)
    edges = np.searchsorted(xs, boundaries, side="left")
    return np.repeat(np.arange(boundaries.size + 1), np.diff(edges, prepend=0, append=xs.size))
