"""Weight sharing: replace a tensor's values by a small codebook and one code per element."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from converters.compress.assign import lookup, nearest_codes, stored_codes
from converters.compress.config import Init
from converters.compress.kmeans import kmeans_1d
from dcformat.codec.huffman import frequencies

KMEANS_SAMPLE = 1 << 22  # larger tensors are clustered from this many evenly ranked weights
BLOCK = 1 << 20  # weights measured at a time (converters.compress.tensor)


@dataclass(frozen=True)
class SharedTensor:
    """A flat tensor as ``codebook[codes]``.

    With ``zero_symbol`` the tensor had exact zeros (pruned weights): ``codebook[0]`` is exactly
    0.0, exactly the zeros get code 0, and the k-means centroids of the other weights get codes
    1..K-1. Otherwise all K codes are centroids.
    """

    codebook: np.ndarray  # (K,) float32
    codes: np.ndarray  # flat, uint8 for K <= 256 else uint16
    zero_symbol: bool

    def decode(self) -> np.ndarray:
        """The shared-weight values, flat (float32)."""
        return self.codebook[self.codes]

    def compact(self) -> SharedTensor:
        """Unused codebook entries dropped (the zero symbol stays first), codes narrowed."""
        k = len(self.codebook)
        counts = frequencies(self.codes, k)
        if self.zero_symbol:
            counts[0] = 1
        used = np.flatnonzero(counts)
        if len(used) == k:
            return self
        if self.codes.dtype not in (np.uint8, np.uint16):
            remap = np.zeros(k, dtype=_code_dtype(len(used)))
            remap[used] = np.arange(len(used))
            return SharedTensor(self.codebook[used], remap[self.codes], self.zero_symbol)
        remap = np.zeros(1 << (8 * self.codes.itemsize), dtype=_code_dtype(len(used)))  # every code
        remap[used] = np.arange(len(used))
        codes = lookup(remap, self.codes.reshape(-1)).reshape(self.codes.shape)
        return SharedTensor(self.codebook[used], codes, self.zero_symbol)


def _code_dtype(k: int) -> type[np.unsignedinteger]:
    return np.uint8 if k <= 256 else np.uint16


def share_weights(
    weights: np.ndarray,
    bits: int,
    *,
    init: Init = "linear",
    max_iter: int = 300,
    seed: int = 0,
    importance: np.ndarray | None = None,
    clustered: np.ndarray | None = None,
    stored: np.ndarray | None = None,
) -> SharedTensor:
    """Quantize ``weights`` (flattened) to at most 2**bits shared values with 1-D k-means.

    Exact zeros are kept exact (code 0) when the tensor has any; the k-means then clusters the
    nonzero weights into 2**bits - 1 centroids. ``importance`` (one value >= 0 per weight)
    weighs each weight's squared error, as calibration measures it. Tensors over
    KMEANS_SAMPLE weights are clustered from about KMEANS_SAMPLE of them (evenly ranked
    values and the extremes; with importance, an even stride through the tensor), then every
    weight takes its nearest centroid, as k-means assigns them. ``clustered``, what
    :func:`kmeans_input` gives for the weights, saves sorting them when the caller has it
    (it is not used with importance). ``stored``, the weights' 16-bit stored form when they
    are exactly those widened (float16, or bfloat16 bits as uint16), lets a tensor over
    KMEANS_SAMPLE weights take its codes through a table of the 65536 values (the same codes).
    """
    w = np.asarray(weights).reshape(-1)
    if w.size == 0:
        raise ValueError("cannot quantize an empty tensor")
    k = 2**bits
    kmeans = {"init": init, "max_iter": max_iter, "seed": seed}
    imp = None if importance is None else np.asarray(importance, dtype=np.float32).reshape(-1)
    if imp is not None and imp.size != w.size:
        raise ValueError(f"{imp.size} importance values for {w.size} weights")
    if imp is not None:
        clustered = None
    if w.size > KMEANS_SAMPLE and clustered is not None:  # the sample is given: no copy of the nonzeros
        nonzeros = np.count_nonzero(w)
        if not nonzeros:
            return SharedTensor(np.zeros(1, dtype=np.float32), np.zeros(w.size, np.uint8), zero_symbol=True)
        zero_symbol = nonzeros < w.size
        fitted = kmeans_1d(clustered, k - zero_symbol, labels=False, **kmeans)
        return _assign(w, fitted.centroids.astype(np.float32), zero_symbol, stored)
    nonzero = w != 0
    zero_symbol = not nonzero.all()
    if zero_symbol and not nonzero.any():
        return SharedTensor(np.zeros(1, dtype=np.float32), np.zeros(w.size, np.uint8), zero_symbol=True)
    kept = w[nonzero] if zero_symbol else w
    kept_imp = None if imp is None else imp[nonzero] if zero_symbol else imp
    if w.size > KMEANS_SAMPLE:
        if kept_imp is None:
            fitted = kmeans_1d(_ranked_sample(np.sort(kept)), k - zero_symbol, labels=False, **kmeans)
        else:
            step = -(-kept.size // KMEANS_SAMPLE)
            fitted = kmeans_1d(
                kept[::step], k - zero_symbol, importance=kept_imp[::step], labels=False, **kmeans
            )
        return _assign(w, fitted.centroids.astype(np.float32), zero_symbol, stored)
    result = kmeans_1d(kept, k - zero_symbol, importance=kept_imp, ordered=clustered, **kmeans)
    centroids = result.centroids.astype(np.float32)
    if not zero_symbol:
        return SharedTensor(centroids, result.labels.astype(_code_dtype(len(centroids))), zero_symbol=False)
    codebook = np.concatenate(([np.float32(0)], centroids))
    codes = np.zeros(w.size, dtype=_code_dtype(len(codebook)))
    codes[nonzero] = result.labels + 1
    return SharedTensor(codebook, codes, zero_symbol=True)


def kmeans_input(ordered: np.ndarray) -> np.ndarray:
    """What :func:`share_weights` clusters, from ``np.sort`` of the flat weights: their nonzero
    values sorted, or for a tensor over KMEANS_SAMPLE weights about KMEANS_SAMPLE of those
    evenly ranked (without importance)."""
    zero = ordered.dtype.type(0)  # the zeros (and -0.0) are one run of the sorted weights
    first, stop = np.searchsorted(ordered, zero, side="left"), np.searchsorted(ordered, zero, side="right")
    if ordered.size <= KMEANS_SAMPLE:
        return np.concatenate((ordered[:first], ordered[stop:])) if stop > first else ordered
    # _ranked_sample of the nonzeros, in slices of ``ordered`` (no copy of the nonzeros):
    # rank r of the nonzeros is ordered[r] below the zeros, ordered[r + zeros] above them
    size = ordered.size - (stop - first)
    if not size:
        return ordered[:0]
    step = -(-size // KMEANS_SAMPLE)
    above = -(-first // step) * step  # the first rank of the stride above the zeros
    largest = ordered[-1:] if stop < ordered.size else ordered[first - 1 : first]
    return np.concatenate((ordered[:first:step], ordered[above + stop - first :: step], largest))


def _ranked_sample(ordered: np.ndarray) -> np.ndarray:
    """About KMEANS_SAMPLE evenly ranked values of the sorted ``ordered`` and the largest."""
    return np.concatenate([ordered[:: -(-ordered.size // KMEANS_SAMPLE)], ordered[-1:]])


def _assign(
    values: np.ndarray, centroids: np.ndarray, zero_symbol: bool, stored: np.ndarray | None = None
) -> SharedTensor:
    """Each value's nearest centroid (code 0 for exact zeros with a zero symbol), in blocks;
    through a table of the 65536 values given their 16-bit ``stored`` form."""
    codebook = np.concatenate(([np.float32(0)], centroids)) if zero_symbol else centroids
    boundaries = (centroids[:-1].astype(np.float64) + centroids[1:]) / 2
    dtype = _code_dtype(len(codebook))
    if stored is not None and stored.size == values.size:
        codes = stored_codes(boundaries, stored.reshape(-1), dtype, zero_symbol)
    else:
        codes = nearest_codes(boundaries, values, dtype, zero_symbol)
    return SharedTensor(codebook, codes, zero_symbol)
