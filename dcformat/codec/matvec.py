"""Products on the compressed form of a weight matrix: the native kernels when built, else numpy.

Two forms of a weight ``W [rows, in]`` whose values are ``codebook[code]``:

* sparse (:func:`spmm`): CSR row pointers ``indptr`` (int64, rows + 1), column indices
  ``cols`` (uint16 when ``in`` <= 65536, else uint32; int16/int32 arrays are read as their
  unsigned bits) and one uint8 code per stored entry;
* dense codes (:func:`lut`): one uint8 code per weight, ``codes [rows, in]``.

The C extension ``dcformat.codec._matvec`` (``dcformat/codec/_matvec.c``) looks the codebook up in its
inner loop, releases the GIL and splits rows between ``threads``. The numpy path computes the
same products (up to float32 summation order) and raises the same errors;
``DCNN_NO_NATIVE=1`` forces it. Bad arguments raise :class:`DcnnError`.
"""

from __future__ import annotations

import itertools
import os

import numpy as np

from ..errors import DcnnError

try:
    from . import _matvec
except ImportError:  # built without a compiler: numpy does the work
    _matvec = None

AVAILABLE = _matvec is not None
MAX_CODEBOOK = 256  # codes are uint8
_NUMPY_BLOCK = 1 << 16  # stored entries the numpy path multiplies at a time


def enabled() -> bool:
    """Whether products go through the native kernels (built, and not DCNN_NO_NATIVE=1)."""
    return _matvec is not None and os.environ.get("DCNN_NO_NATIVE", "") in ("", "0")


def column_dtype(in_features: int) -> np.dtype:
    """The narrowest column index type for a matrix of ``in_features`` columns."""
    return np.dtype(np.uint16) if in_features <= 1 << 16 else np.dtype(np.uint32)


def aligned_empty(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialized C-contiguous float32 array starting on a 64-byte boundary: the kernel's
    rows of X (4, 8, 16 values) then never straddle two cache lines (measured 1.8x at p = 16)."""
    n = int(np.prod(shape, dtype=np.int64))
    buffer = np.empty(n + 16, dtype=np.float32)
    start = (-buffer.ctypes.data // 4) % 16
    return buffer[start : start + n].reshape(shape)


def csr_of(positions: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Row pointers and column indices of increasing flat positions in a ``rows x cols`` matrix."""
    positions = np.asarray(positions, dtype=np.int64)
    row, col = np.divmod(positions, max(cols, 1))
    indptr = np.searchsorted(row, np.arange(rows + 1)).astype(np.int64)
    return indptr, col.astype(column_dtype(cols))


def spmm(
    indptr: np.ndarray,
    cols: np.ndarray,
    codes: np.ndarray,
    codebook: np.ndarray,
    x: np.ndarray,
    *,
    out: np.ndarray | None = None,
    transposed_out: bool = False,
    threads: int = 1,
) -> np.ndarray:
    """``Y[n] = W @ X[n]`` for the sparse form of ``W [rows, in]`` and float32 ``x [n, in, p]``.

    Returns ``y [n, rows, p]``, or ``[n, p, rows]`` with ``transposed_out`` (written into
    ``out`` when given: a C-contiguous float32 array of that shape).
    """
    indptr, cols, codes, codebook = _checked_form(indptr, cols, codes, codebook)
    x = _float32_c(x, "x", 3)
    n, in_features, p = x.shape
    if p > 1 and x.ctypes.data % 64:
        aligned = aligned_empty(x.shape)
        aligned[...] = x
        x = aligned
    rows = indptr.size - 1
    shape = (n, p, rows) if transposed_out else (n, rows, p)
    out = _out(out, shape)
    if p == 0 or n == 0:
        out[...] = 0
        return out
    threads = _checked_threads(threads)
    if enabled():
        try:
            _matvec.spmm(indptr, cols, codes, codebook, x, out, in_features, p, n, transposed_out, threads)
        except ValueError as exc:
            raise DcnnError(str(exc), rule="usage") from None
        return out
    _check_csr(indptr, cols, codes, in_features)
    values = _table(codebook)[codes]
    for i in range(n):
        y = _spmm_numpy(indptr, cols.astype(np.int64), values, x[i])
        out[i] = y.T if transposed_out else y
    return out


def lut(codes: np.ndarray, codebook: np.ndarray, x: np.ndarray, *, threads: int = 1) -> np.ndarray:
    """``x @ W.T`` for dense codes ``codes [rows, in]`` (uint8) and float32 ``x [b, in]``: ``[b, rows]``."""
    codes = np.ascontiguousarray(codes)
    if codes.dtype != np.uint8 or codes.ndim != 2:
        raise DcnnError("codes must be a 2-D uint8 array", rule="usage")
    codebook = _checked_codebook(codebook)
    x = _float32_c(x, "x", 2)
    rows, in_features = codes.shape
    if x.shape[1] != in_features:
        raise DcnnError(f"x has {x.shape[1]} columns, the weight {in_features}", rule="usage")
    out = np.empty((x.shape[0], rows), dtype=np.float32)
    threads = _checked_threads(threads)
    if enabled():
        try:
            _matvec.lut(codes, codebook, x, out, rows, in_features, x.shape[0], threads)
        except ValueError as exc:
            raise DcnnError(str(exc), rule="usage") from None
        return out
    table = _table(codebook)
    step = max(1, _NUMPY_BLOCK // max(in_features, 1))
    for r in range(0, rows, step):
        out[:, r : r + step] = x @ table[codes[r : r + step]].T
    return out


def features() -> dict[str, bool]:
    """The instruction sets the native kernels use here (empty without them)."""
    return dict(_matvec.features()) if _matvec is not None else {}


# -- internals ------------------------------------------------------------------------------


def _checked_threads(threads: object) -> int:
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 64:
        raise DcnnError(f"threads must be an int in 1..64, not {threads!r}", rule="usage")
    return threads


def _checked_codebook(codebook: np.ndarray) -> np.ndarray:
    codebook = np.ascontiguousarray(codebook)
    if codebook.dtype != np.float32 or codebook.ndim != 1 or not 1 <= codebook.size <= MAX_CODEBOOK:
        raise DcnnError(f"the codebook must be 1 to {MAX_CODEBOOK} float32 values", rule="usage")
    return codebook


def _checked_form(
    indptr: np.ndarray, cols: np.ndarray, codes: np.ndarray, codebook: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    indptr = np.ascontiguousarray(indptr)
    cols = np.ascontiguousarray(cols)
    codes = np.ascontiguousarray(codes)
    if indptr.dtype != np.int64 or indptr.ndim != 1 or indptr.size < 1:
        raise DcnnError("indptr must be a 1-D int64 array of rows + 1 entries", rule="usage")
    if cols.dtype not in (np.uint16, np.int16, np.uint32, np.int32) or cols.ndim != 1:
        raise DcnnError("cols must be a 1-D array of 16- or 32-bit indices", rule="usage")
    if codes.dtype != np.uint8 or codes.ndim != 1 or codes.size != cols.size:
        raise DcnnError("codes must be a 1-D uint8 array, one per column index", rule="usage")
    unsigned = cols.view(np.uint16 if cols.itemsize == 2 else np.uint32)
    return indptr, unsigned, codes, _checked_codebook(codebook)


def _check_csr(indptr: np.ndarray, cols: np.ndarray, codes: np.ndarray, in_features: int) -> None:
    """The checks the native kernel makes, for the numpy path."""
    if indptr[0] != 0 or indptr[-1] != codes.size:
        raise DcnnError("indptr must run from 0 to the number of entries", rule="usage")
    if np.any(np.diff(indptr) < 0):
        raise DcnnError("indptr must not decrease", rule="usage")
    if cols.size and int(cols.max()) >= in_features:
        raise DcnnError("column index out of range", rule="usage")


def _float32_c(x: np.ndarray, what: str, ndim: int) -> np.ndarray:
    x = np.ascontiguousarray(x)
    if x.dtype != np.float32 or x.ndim != ndim:
        raise DcnnError(f"{what} must be a {ndim}-D float32 array", rule="usage")
    return x


def _out(out: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if out.dtype != np.float32 or out.shape != shape or not out.flags.c_contiguous or not out.flags.writeable:
        raise DcnnError(f"out must be a writable C-contiguous float32 array of shape {shape}", rule="usage")
    return out


def _table(codebook: np.ndarray) -> np.ndarray:
    """The codebook zero-padded to 256 values, as the kernel reads it: any uint8 code indexes it."""
    table = np.zeros(MAX_CODEBOOK, dtype=np.float32)
    table[: codebook.size] = codebook
    return table


def _spmm_numpy(indptr: np.ndarray, cols: np.ndarray, values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``W @ x`` for ``x [in, p]``: products of about _NUMPY_BLOCK entries, summed per row."""
    rows = indptr.size - 1
    out = np.zeros((rows, x.shape[1]), dtype=np.float32)
    lengths = np.diff(indptr)
    bounds = np.unique(np.searchsorted(indptr, np.arange(0, indptr[-1], _NUMPY_BLOCK), side="right") - 1)
    bounds = np.append(bounds[bounds < rows], rows)
    for first, last in itertools.pairwise(bounds):
        start, stop = indptr[first], indptr[last]
        if stop == start:
            continue
        products = values[start:stop, None] * x[cols[start:stop]]
        full = lengths[first:last] > 0
        starts = indptr[first:last][full] - start
        out[first:last][full] = np.add.reduceat(products, starts, axis=0)
    return out
