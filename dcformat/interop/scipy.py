"""scipy interop: the reader's sparse matrices for framework="numpy" (scipy imported on call)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import dtypes


def sparse_matrix(
    row: np.ndarray, col: np.ndarray, stored: np.ndarray, kind: str, shape: tuple[int, int], layout: str
) -> Any:
    """A scipy.sparse COO or CSR matrix of stored-form values at sorted (row, col)."""
    import scipy.sparse

    # scipy's kernels have no half-precision types: widen (exactly) to float32.
    values = dtypes.bfloat16_to_float32(stored) if kind == "bfloat16" else stored
    values = values.astype(np.float32) if values.dtype == np.float16 else values
    if layout == "coo":
        return scipy.sparse.coo_matrix((values, (row, col)), shape=shape)
    indptr = np.searchsorted(row, np.arange(shape[0] + 1)).astype(np.int64)
    return scipy.sparse.csr_matrix((values, col, indptr), shape=shape)
