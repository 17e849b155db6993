"""Decode coded tensors with the native kernels when they are built, else with numpy.

The C extension ``dcformat.codec._native`` (``dcformat/codec/_native.c``, built by the package
build when a compiler is there) decodes Huffman streams straight into the output,
codebook values included, and scatters sparse entries; it releases the GIL (but for short
calls, where handing it over costs more), so a ``threads`` setting decodes disjoint chunk
ranges in parallel. The numpy path gives the same results and the same errors
(``huffman_numpy``); ``DCNN_NO_NATIVE=1`` forces it.

Both paths run the checks only decoding can make (spec section 6): every chunk ends
where the next begins, padding bits are zero, one-symbol streams are all zero bits,
and sparse positions stay inside the tensor. Errors carry file offsets (``origin`` is
where the stream's data starts in the file).
"""

from __future__ import annotations

import os
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DcnnError, FormatError, fail, stop
from ..layout import align_up
from . import huffman_numpy
from .huffman import Stream

try:
    from . import _native
except ImportError:  # built without a compiler: the numpy path does the work
    _native = None

AVAILABLE = _native is not None
# Below this many symbols a stream is decoded by the calling thread alone; above it, in up to
# PARTS_PER_THREAD parts a thread, of decreasing size, which free threads take in turn.
MIN_PARALLEL_SYMBOLS = 1 << 18
PARTS_PER_THREAD = 4
_GROUP = 4  # chunks the native kernel interleaves; thread parts start at multiples of it
HUGE_PAGE = 1 << 21  # outputs of at least this many bytes start on a multiple of it


def enabled() -> bool:
    """Whether decoding goes through the native kernels (built, and not DCNN_NO_NATIVE=1)."""
    return _native is not None and os.environ.get("DCNN_NO_NATIVE", "") in ("", "0")


def crc32(data: Any) -> int:
    """``zlib.crc32(data)``, by the native kernel where it folds with the CPU's carry-less multiply
    (several times zlib's speed) and is enabled."""
    if enabled() and _native.FAST_CRC32:
        return _native.crc32(data)
    return zlib.crc32(data)


def check_threads(threads: Any) -> int:
    """``threads`` as a positive int, else a DcnnError."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise DcnnError(f"threads must be a positive int, not {threads!r}", rule="usage")
    return threads


def decode_symbols(stream: Stream, threads: int = 1) -> np.ndarray:
    """The stream's symbols (uint16)."""
    if enabled():
        identity = np.arange(stream.lengths.size, dtype=np.uint16)
        return decode_values(stream, identity, None, threads)[0]
    one = _prologue(stream)
    return huffman_numpy.decode(stream) if one is None else np.full(stream.count, one, dtype=np.uint16)


def decode_values(
    stream: Stream,
    values: np.ndarray,
    nonzero: np.ndarray | None,
    threads: int = 1,
    new: Callable[[int, np.dtype], np.ndarray] | None = None,
) -> tuple[np.ndarray, int]:
    """``values[symbol]`` for every symbol, and how many of those ``nonzero`` flags (0 if None).
    ``new(count, dtype)`` gives the output array of the native path (default: ``output``)."""
    one = _prologue(stream)
    if one is None and not enabled():  # a new array: indexing into ``out`` takes a temporary
        symbols = huffman_numpy.decode(stream)
        return values[symbols], huffman_numpy.count_flagged(symbols, nonzero)
    out = (new or output)(stream.count, values.dtype)
    if one is not None:
        out.fill(values[one])
        return out, stream.count * int(nonzero[one]) if nonzero is not None else 0
    parts = _native_decode(stream, values, nonzero, out, threads, sums=False)
    return out, sum(p.nonzeros for p in parts)


def decode_sparse(
    code_symbols: np.ndarray,
    gaps: Stream,
    numel: int,
    values: np.ndarray,
    nonzero: np.ndarray | None,
    threads: int = 1,
    row_scales: np.ndarray | None = None,
    new: Callable[[int, np.dtype], np.ndarray] | None = None,
) -> tuple[np.ndarray, int]:
    """Dense flat output of a SPARSE_CODES tensor from its decoded codes and its gaps stream,
    and how many entries ``nonzero`` flags. Gap errors come before positions past the end.
    ``new(count, dtype)`` gives the output array, all zeros (default: ``np.zeros``).

    ``row_scales`` (format 1.1: float32, one per row; ``values`` float32) multiplies each
    entry by its row's scale; the count is then of the products that are not zero.
    """
    gap_symbols, parts = _decode_gaps(gaps, threads)
    n = code_symbols.size
    if gap_symbols.size != n:
        stop(FormatError(f"{n} codes but {gap_symbols.size} gaps", rule="counts"))
    last = sum(p.symbol_sum for p in parts) + n - 1
    if last >= numel:
        stop(
            FormatError(f"gaps run to position {last}, past the tensor's {numel} elements", rule="positions")
        )
    out = (new or np.zeros)(numel, values.dtype)
    row_len = numel // row_scales.size if row_scales is not None and row_scales.size else 0
    if not enabled():
        huffman_numpy.scatter(gap_symbols, code_symbols, values, out)
        if row_scales is not None:
            return out, scale_rows(out, row_scales)
        return out, huffman_numpy.count_flagged(code_symbols, nonzero)
    tasks, previous = [], -1
    for p in parts:  # each part starts after the positions of the parts before it
        a, b = p.first * gaps.chunk_size, min(p.last * gaps.chunk_size, n)
        tasks.append(
            lambda a=a, b=b, start=previous: _native.scatter(
                gap_symbols[a:b],
                code_symbols[a:b],
                values,
                values.itemsize,
                nonzero,
                out,
                start,
                row_scales,
                row_len,
            )
        )
        previous += p.symbol_sum + b - a
    # Each result is (first entry past the tensor or -1, _, nonzeros); the position check
    # above excludes the first.
    return out, sum(nonzeros for _, _, nonzeros in in_parallel(tasks, threads))


def output(count: int, dtype: np.dtype, zeroed: bool = False) -> np.ndarray:
    """A new 1-D array for ``count`` values that the decoder writes in full (``zeroed``: all
    zero, from calloc, whose fresh pages come zeroed by the system at no cost). One of
    HUGE_PAGE bytes or more is a view that starts on a HUGE_PAGE boundary inside an allocation
    HUGE_PAGE bytes larger (address space, not memory: the head is never touched): where the
    system backs large allocations with 2 MiB pages (Linux transparent huge pages, which numpy
    asks for), writing it takes one page fault per 2 MiB instead of one per 4 KiB, most of the
    cost of filling a fresh array of a few MiB."""
    dtype = np.dtype(dtype)
    size = count * dtype.itemsize
    allocate = np.zeros if zeroed else np.empty
    if size < HUGE_PAGE:
        return allocate(count, dtype=dtype)
    base = allocate(size + HUGE_PAGE, dtype=np.uint8)
    start = -base.ctypes.data % HUGE_PAGE
    return base[start : start + size].view(dtype)


class Arena:
    """One zeroed allocation (see ``output``) that hands out consecutive, 64-byte aligned,
    all-zero arrays, each byte once, for the outputs of a whole file's load: a few huge pages
    take the page faults of thousands of small ones (a fresh 4 KiB page costs a fault and its
    zeroing, more than decoding the page's values). Thread safe; past ``size`` bytes it
    allocates separately (zeroed too). The memory returns when every array it handed out is
    gone."""

    ALIGN = 64

    def __init__(self, size: int) -> None:
        buffer = output(size + self.ALIGN, np.dtype(np.uint8), zeroed=True)
        start = -buffer.ctypes.data % self.ALIGN
        self._buffer = buffer[start : start + size]
        self._used = 0
        self._lock = threading.Lock()

    def new(self, count: int, dtype: np.dtype) -> np.ndarray:
        """A 1-D array of ``count`` ``dtype`` zeros."""
        dtype = np.dtype(dtype)
        size = count * dtype.itemsize
        with self._lock:
            start = self._used
            if start + size > self._buffer.size:
                return output(count, dtype, zeroed=True)
            self._used = align_up(start + size, self.ALIGN)
        return self._buffer[start : start + size].view(dtype)


def scale_rows(out: np.ndarray, row_scales: np.ndarray) -> int:
    """Multiply the flat float32 ``out`` in place by one float32 scale per row (format 1.1);
    returns how many products are not zero."""
    if not out.size:
        return 0
    if enabled():
        return _native.scale_rows(out, row_scales, out.size // row_scales.size)
    out.reshape(row_scales.size, -1)[...] *= row_scales[:, None]
    return int(np.count_nonzero(out))


# -- internals ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    """What the native kernel reports for chunks first..last-1 of a stream."""

    first: int
    last: int
    bad_chunk: int
    nonzeros: int
    symbol_sum: int


def _prologue(stream: Stream) -> int | None:
    """Checks before decoding; the symbol of a one-symbol stream, else None."""
    buf = stream.data
    if buf.size != -(-stream.bit_length // 8):  # the header checks catch this; a guard for callers
        fail(FormatError(f"{buf.size} data bytes for {stream.bit_length} bits", rule="huffman-data"))
    tail = stream.bit_length & 7
    if stream.count and tail and buf[-1] >> tail:
        fail(
            FormatError(
                "padding bits after the stream are not zero",
                rule="huffman-data",
                offset=stream.origin + buf.size - 1,
            )
        )
    used = np.flatnonzero(stream.lengths)
    if stream.count and used.size == 1:
        if stream.bit_length != stream.count or buf.any():
            fail(
                FormatError("a one-symbol stream must be all zero bits, one per symbol", rule="huffman-data")
            )
        return int(used[0])
    return None


def _decode_gaps(gaps: Stream, threads: int) -> tuple[np.ndarray, list[_Part]]:
    """The gap symbols, and the parts they were decoded in, with the sum of their gaps."""
    one = _prologue(gaps)
    if one is not None or not enabled():
        symbols = np.full(gaps.count, one, dtype=np.uint16) if one is not None else huffman_numpy.decode(gaps)
        return symbols, [_Part(0, gaps.n_chunks, -1, 0, int(symbols.sum(dtype=np.int64)))]
    identity = np.arange(gaps.lengths.size, dtype=np.uint16)
    out = np.empty(gaps.count, dtype=np.uint16)
    return out, _native_decode(gaps, identity, None, out, threads)


def _native_decode(
    stream: Stream,
    values: np.ndarray,
    nonzero: np.ndarray | None,
    out: np.ndarray,
    threads: int,
    sums: bool = True,
) -> list[_Part]:
    """Decode into ``out`` with the native kernel, the chunks split into parts for ``threads``;
    the parts' symbol sums are 0 unless ``sums``."""
    n_chunks = stream.n_chunks
    parts = 1
    if threads > 1 and stream.count >= MIN_PARALLEL_SYMBOLS:
        parts = max(threads, min(PARTS_PER_THREAD * threads, 2 * stream.count // MIN_PARALLEL_SYMBOLS))
    # Part i holds about (parts - i) shares: large parts first, small ones last, so that threads
    # taking them in turn finish close together.
    shares = parts * (parts + 1) // 2
    before = [parts * i - i * (i - 1) // 2 for i in range(parts)]  # shares of the parts before part i
    cuts = sorted({min(n_chunks, round(b * n_chunks / shares / _GROUP) * _GROUP) for b in before})
    ranges = [(a, b) for a, b in zip(cuts, [*cuts[1:], n_chunks], strict=True) if a < b]

    def part(first: int, last: int) -> _Part:
        result = _native.decode(
            stream.data,
            stream.bit_length,
            stream.lengths,
            stream.chunk_size,
            stream.offsets,
            stream.count,
            first,
            last,
            values,
            values.itemsize,
            nonzero,
            out,
            sums,
        )
        return _Part(first, last, *result)

    results = in_parallel([lambda a=a, b=b: part(a, b) for a, b in ranges], threads)
    bad = [p for p in results if p.bad_chunk >= 0]
    if bad:
        chunk = bad[0].bad_chunk
        start = int(stream.offsets[chunk - 1]) if chunk else 0
        expected = int(stream.offsets[chunk]) if chunk + 1 < n_chunks else stream.bit_length
        fail(
            FormatError(
                f"chunk {chunk} does not end at bit {expected}",
                rule="huffman-data",
                offset=stream.origin + start // 8,
            )
        )
    return results


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def pool(threads: int) -> ThreadPoolExecutor:
    """The shared pool of ``threads - 1`` workers that, with the caller, runs ``threads`` tasks."""
    with _pools_lock:
        found = _pools.get(threads)
        if found is None:
            found = _pools[threads] = ThreadPoolExecutor(threads - 1, thread_name_prefix="dcnn-decode")
    return found


def in_parallel(tasks: list[Callable[[], Any]], threads: int) -> list[Any]:
    """Run tasks on ``threads`` threads (the caller's included); results in task order. The
    caller runs, in order, every task no worker has started yet, skipping those a worker has,
    and then waits for those: a pool busy with other work delays nothing, and a worker that
    joins late takes tasks beside the caller instead of the caller waiting on it."""
    if threads == 1 or len(tasks) <= 1:
        return [task() for task in tasks]
    futures = [pool(threads).submit(task) for task in tasks[1:]]
    results: list[Any] = [tasks[0]()]
    taken = []  # indices of the tasks a worker started
    for i, (future, task) in enumerate(zip(futures, tasks[1:], strict=True), 1):
        if future.cancel():  # not started: the caller's to run
            results.append(task())
        else:
            results.append(None)
            taken.append(i)
    for i in taken:
        results[i] = futures[i - 1].result()
    return results
