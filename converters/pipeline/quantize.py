"""Weight sharing: replace a tensor's values by a small codebook and one code per element."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from converters.pipeline.config import Init
from converters.pipeline.kmeans import kmeans_1d


@dataclass(frozen=True)
class SharedTensor:
    """A tensor as ``codebook[codes]``.

    With ``zero_symbol`` the tensor had exact zeros (pruned weights): ``codebook[0]`` is exactly
    0.0, exactly the zeros get code 0, and the k-means centroids of the other weights get codes
    1..K-1. Otherwise all K codes are centroids.
    """

    codebook: np.ndarray  # (K,) float32
    codes: np.ndarray  # int64, the tensor's shape
    zero_symbol: bool

    def decode(self) -> np.ndarray:
        """The shared-weight tensor (float32)."""
        return self.codebook[self.codes]


def share_weights(
    weights: np.ndarray, bits: int, *, init: Init = "linear", max_iter: int = 300, seed: int = 0
) -> SharedTensor:
    """Quantize ``weights`` to at most 2**bits shared values with 1-D k-means.

    Exact zeros are kept exact (code 0) when the tensor has any; the k-means then clusters the
    nonzero weights into 2**bits - 1 centroids.
    """
    w = np.asarray(weights)
    if w.size == 0:
        raise ValueError("cannot quantize an empty tensor")
    k = 2**bits
    nonzero = w != 0
    if nonzero.all():
        result = kmeans_1d(w, k, init=init, max_iter=max_iter, seed=seed)
        codes = result.labels.reshape(w.shape)
        return SharedTensor(result.centroids.astype(np.float32), codes, zero_symbol=False)
    codes = np.zeros(w.shape, dtype=np.int64)
    if not nonzero.any():
        return SharedTensor(np.zeros(1, dtype=np.float32), codes, zero_symbol=True)
    result = kmeans_1d(w[nonzero], k - 1, init=init, max_iter=max_iter, seed=seed)
    codes[nonzero] = result.labels + 1
    codebook = np.concatenate(([0.0], result.centroids)).astype(np.float32)
    return SharedTensor(codebook, codes, zero_symbol=True)
