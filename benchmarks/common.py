"""Helpers shared by the benchmarks: timing, and the checkout's ``examples`` on the path.

Every method is run ``rounds`` times, the methods interleaved round by round, so load from
other processes hits them alike; the best and the median time are reported. Before each call
the memory earlier calls freed goes back to the system (release_freed_memory), so no method
writes its output into pages another one paid for. MB is 10^6 bytes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zstandard

# Benchmarks run as scripts from a checkout; the real models and data live in its examples/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CACHE = Path(os.environ.get("DCNN_BENCH_CACHE", Path(tempfile.gettempdir()) / "dcnn-bench-cache"))
ZSTD_LEVEL = 19


def warm_memory(nbytes: int) -> None:
    """Touch ``nbytes`` of fresh memory once: on a VM the first touch of guest memory is far
    slower than later page faults, and it would land on whichever method ran first."""
    block = np.ones(nbytes // 8, dtype=np.int64)
    del block


def zstd_frames(arrays: Mapping[str, np.ndarray], level: int = ZSTD_LEVEL) -> dict[str, bytes]:
    """One zstd frame (content size recorded) per array's raw bytes, cached on disk by content:
    level 19 compresses at a few MB/s, so the first run is slow; only decompression is timed."""
    CACHE.mkdir(parents=True, exist_ok=True)

    def frame(array: np.ndarray) -> bytes:
        raw = np.ascontiguousarray(array).tobytes()
        key = CACHE / f"{hashlib.sha256(raw).hexdigest()[:24]}-{level}.zst"
        if key.exists():
            return key.read_bytes()
        # Large arrays use zstd's own worker threads; the result is still one frame.
        workers = -1 if len(raw) > 32 << 20 else 0
        data = zstandard.ZstdCompressor(level=level, write_content_size=True, threads=workers).compress(raw)
        tmp = key.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(key)
        return data

    names = list(arrays)
    # Largest first over all cores: zstandard releases the GIL while it compresses.
    order = sorted(names, key=lambda n: -arrays[n].nbytes)
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        done = dict(zip(order, pool.map(lambda n: frame(arrays[n]), order), strict=True))
    return {name: done[name] for name in names}


def unzstd_all(frames: Mapping[str, bytes], dtypes: Mapping[str, np.dtype], shapes) -> dict[str, np.ndarray]:
    """Decompress every frame into a dense array (the timed zstd path)."""
    d = zstandard.ZstdDecompressor()
    return {
        name: np.frombuffer(d.decompress(frame), dtype=dtypes[name]).reshape(shapes[name])
        for name, frame in frames.items()
    }


def memcpy_fresh(arrays: list[np.ndarray]) -> Callable[[], list[np.ndarray]]:
    """Copy each array into newly allocated memory: what any loader pays to produce new arrays."""
    return lambda: [a.copy() for a in arrays]


def memcpy_warm(source: np.ndarray) -> Callable[[], np.ndarray]:
    """Copy into memory already mapped: the machine's copy bandwidth, the physical limit."""
    target = np.empty_like(source)
    np.copyto(target, source)

    def run() -> np.ndarray:
        np.copyto(target, source)
        return target

    return run


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None on other C libraries."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Collect garbage and hand the C allocator's free memory back to the system (glibc's
    malloc_trim; elsewhere only the collection). A method run after another that freed its
    output would otherwise write into pages already faulted in (a fresh page costs a fault and
    its zeroing, more than copying it), and look faster than in a process that loads once."""
    gc.collect()
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)


def measure(methods: Mapping[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per run of each method; one untimed warm-up run each, then interleaved rounds,
    each call after release_freed_memory."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    for fn in methods.values():
        fn()
    for _ in range(rounds):
        for name, fn in methods.items():
            release_freed_memory()
            start = time.perf_counter()
            result = fn()
            times[name].append(time.perf_counter() - start)
            del result
    return times


def print_table(
    title: str,
    dense_bytes: int,
    times: Mapping[str, list[float]],
    timed: Mapping[str, str],
    reference: str,
    extra: Mapping[str, str] | None = None,
    extra_name: str = "",
) -> None:
    """A markdown table: time (best, median), dense MB/s (best) and the ratio to ``reference``."""
    ref = min(times[reference])
    print(f"\n### {title}\n")
    head = (
        "| method | what is timed | best ms | median ms | dense MB/s | x " + reference.split(" (")[0] + " |"
    )
    rule = "|---|---|---:|---:|---:|---:|"
    if extra:
        head += f" {extra_name} |"
        rule += "---:|"
    print(head)
    print(rule)
    for name, runs in times.items():
        best, median = min(runs), statistics.median(runs)
        row = (
            f"| {name} | {timed[name]} | {best * 1e3:.1f} | {median * 1e3:.1f} | "
            f"{dense_bytes / best / 1e6:,.0f} | {ref / best:.2f} |"
        )
        if extra:
            row += f" {extra.get(name, '')} |"
        print(row)


def with_env(no_native: bool, fn: Callable[[], object]) -> Callable[[], object]:
    """fn, run with the native decoder off (no_native) or on."""

    def run() -> object:
        old = os.environ.get("DCNN_NO_NATIVE")
        os.environ["DCNN_NO_NATIVE"] = "1" if no_native else "0"
        try:
            return fn()
        finally:
            if old is None:
                del os.environ["DCNN_NO_NATIVE"]
            else:
                os.environ["DCNN_NO_NATIVE"] = old

    return run
