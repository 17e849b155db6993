"""How data-free conversion scales: per-tensor task times measured here, fed to a model of N
machines, predicting the wall time for 7B, 70B and 405B-parameter bfloat16 checkpoints.

Measured here: ``compress_weight`` (read excluded) on bfloat16 tensors of 1M, 4M and 16M
SYNTHETIC random-normal weights, fitted as ``seconds = a + b * parameters`` per core, and the
.dcnn bytes per parameter. The default SAFE config (8-bit weight sharing, no pruning).

The model (assumptions, all options below):
- Tensors are the tasks (no tensor is split): Llama-shaped checkpoints (Llama-2-7B,
  Llama-2-70B, Llama-3.1-405B: q/k/v/o, gate/up/down, norms, embeddings, lm_head).
- Each of N machines runs ``--cores`` workers. A worker reads its tensor at ``--disk / cores``
  (its machine's read bandwidth shared by its cores); all machines together read at most
  ``--storage`` (shared storage): the wall time is at least the checkpoint's bytes over
  ``min(N x --disk, --storage)``.
- Workers take tasks in source order as they free up (the process pool's and Ray's FIFO);
  at most 2 x (N x cores) tasks are unwritten at any time, as in converters/parallel.py.
- The driver receives encoded tensors in order over its network link (``--network``; none
  for one machine) and appends them to the .dcnn at ``--write`` bytes/s.
- A start-up cost (``--startup``: pool or cluster connection) is added once.
Not modelled: stragglers, retries, page-cache effects, memory limits.

The model is checked against the measured 1- and 2-worker runs of benchmarks/folders.py
(6-shard, ~600 MB float32 folder): their per-task times are fed back and the 2-worker wall
time predicted from the 1-worker run.

    python benchmarks/scale.py [--cores 32] [--disk 2e9] [--storage 2e10] [--network 1.25e9]
        [--write 1e9] [--reports out/folders]
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# vocab, hidden, ffn, layers, kv dim
MODELS = {
    "7B (Llama-2-7B)": (32000, 4096, 11008, 32, 4096),
    "70B (Llama-2-70B)": (32000, 8192, 28672, 80, 1024),
    "405B (Llama-3.1-405B)": (128256, 16384, 53248, 126, 1024),
}
MACHINES = (1, 8, 64)


def tensors(vocab: int, hidden: int, ffn: int, layers: int, kv: int) -> list[int]:
    """Parameter counts of a Llama-shaped checkpoint's tensors, in file order."""
    layer = [hidden * hidden, kv * hidden, kv * hidden, hidden * hidden, ffn * hidden, ffn * hidden]
    layer += [hidden * ffn, hidden, hidden]
    return [vocab * hidden, *layer * layers, hidden, vocab * hidden]


def measure() -> tuple[float, float, float]:
    """(a seconds, b seconds per parameter, .dcnn bytes per parameter) on one core, bfloat16."""
    from converters.compress.config import SAFE
    from converters.compress.tensor import compress_weight
    from converters.weight import Weight

    rng = np.random.default_rng(0)
    sizes, seconds, stored = [1 << 20, 1 << 22, 1 << 24], [], 0
    for n in sizes:
        bits = (rng.standard_normal(n, dtype=np.float32) * 0.02).view(np.uint32) >> 16
        weight = Weight(f"w{n}", bits.astype(np.uint16).reshape(-1, 1024), "bfloat16")
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            encoded = compress_weight(weight, SAFE).encoded
            best = min(best, time.perf_counter() - start)
        seconds.append(best)
        stored = encoded.stored_bytes
    b, a = np.polyfit(sizes, seconds, 1)
    for n, s in zip(sizes, seconds, strict=True):
        print(f"  bfloat16 tensor of {n:>10,} parameters: {s:6.3f} s = {n / s / 1e6:5.2f} M parameters/s")
    return max(a, 0.0), b, stored / sizes[-1]


def assignment_speedup() -> None:
    """The data-free path on one 16M-weight float32 tensor with the binary-search assignment
    (before) and the table-guided one (now), interleaved; the files are identical."""
    import converters.compress.share as compress
    from converters.compress.config import SAFE
    from converters.compress.tensor import compress_weight
    from converters.weight import Weight

    rng = np.random.default_rng(1)
    weight = Weight("w", (rng.standard_normal((4096, 4096), dtype=np.float32) * 0.02), "float32")
    table = compress.assign

    def binary(boundaries: np.ndarray, values: np.ndarray) -> np.ndarray:
        return np.searchsorted(boundaries, values, side="right")

    best = {"np.searchsorted (before)": float("inf"), "table-guided (now)": float("inf")}
    outputs = {}
    for _ in range(2):
        for label, function in zip(best, (binary, table), strict=True):
            compress.assign = function
            start = time.perf_counter()
            encoded = compress_weight(weight, SAFE).encoded
            best[label] = min(best[label], time.perf_counter() - start)
            outputs[label] = [data for _, data in encoded.payloads]
    compress.assign = table
    print("\nOne core, 16.8M float32 weights, best of 2 interleaved:")
    for label, seconds in best.items():
        print(f"  {label:<26}{seconds:6.2f} s = {weight.array.size / seconds / 1e6:5.2f} M parameters/s")
    print(f"  same bytes: {len({repr(o) for o in outputs.values()}) == 1}")


def simulate(
    task_seconds: Sequence[float], out_bytes: Sequence[float], workers: int, drain: float, startup: float
) -> float:
    """Wall seconds: FIFO workers, at most 2 x workers unwritten tasks, an in-order driver
    taking ``out_bytes / drain`` seconds per result."""
    free = [0.0] * workers
    window = 2 * workers
    written: list[float] = []
    driver = 0.0
    for j, (seconds, size) in enumerate(zip(task_seconds, out_bytes, strict=True)):
        opens = written[j - window] if j >= window else 0.0
        start = max(heapq.heappop(free), opens)
        heapq.heappush(free, start + seconds)
        driver = max(driver, start + seconds) + size / drain
        written.append(driver)
    return startup + driver


def predict(args: argparse.Namespace, a: float, b: float, per_param: float) -> None:
    print(
        f"\nPredicted wall time ({args.cores} cores per machine, disk {args.disk / 1e9:g} GB/s, "
        f"shared storage "
        f"{args.storage / 1e9:g} GB/s, driver network {args.network / 1e9:g} GB/s, "
        f"write {args.write / 1e9:g} GB/s):"
    )
    print(
        f"{'checkpoint':<24}{'params':>9}{'bf16 GB':>9}"
        + "".join(f"{f'{n} machine(s)':>16}" for n in MACHINES)
    )
    for name, shape in MODELS.items():
        counts = tensors(*shape)
        params = sum(counts)
        cells = []
        for n in MACHINES:
            read = args.disk / args.cores  # bytes/s of one worker
            seconds = [a + b * c + 2 * c / read for c in counts]
            drain = args.write if n == 1 else min(args.network, args.write)
            wall = simulate(seconds, [per_param * c for c in counts], n * args.cores, drain, args.startup)
            wall = max(wall, args.startup + 2 * params / min(n * args.disk, args.storage))
            bound = a + b * max(counts) + 2 * max(counts) / read
            cells.append(f"{_hms(wall)}{'*' if wall < 1.2 * bound + args.startup else ' '}")
        print(f"{name:<24}{params / 1e9:>8.1f}B{2 * params / 1e9:>9.0f}" + "".join(f"{c:>16}" for c in cells))
    print("* within 20% of the longest single task (the embeddings or lm_head): more machines cannot help")


def check(reports: Path) -> None:
    runs = {w: reports / f"synthetic-w{w}.json" for w in (1, 2)}
    if not all(p.exists() for p in runs.values()):
        print(f"\nno measured runs in {reports}: run benchmarks/folders.py first")
        return
    data = {w: json.loads(p.read_text()) for w, p in runs.items()}
    measured = {w: d["seconds"] for w, d in data.items()}
    tasks = [t["seconds"] for t in data[1]["workers"]["tasks"]]
    sizes = {row["name"]: row["stored_bytes"] for row in data[1]["tensors"]}
    out = [sizes[t["name"]] for t in data[1]["workers"]["tasks"]]
    drain = sum(out) / max(measured[1] - sum(tasks), 1e-9)  # all that is not a task: the driver
    print(f"\nModel check on the measured runs of benchmarks/folders.py ({reports}):")
    print(f"  1 worker: {len(tasks)} tasks, {sum(tasks):.2f} s of tasks in a {measured[1]:.2f} s conversion")
    predicted = simulate(tasks, out, 2, drain, 0.0)
    print(f"{'workers':<10}{'measured s':>12}{'predicted s':>13}{'error':>8}")
    print(f"{1:<10}{measured[1]:>12.2f}{measured[1]:>13.2f}{'(fit)':>8}")
    error = predicted / measured[2] - 1
    print(f"{2:<10}{measured[2]:>12.2f}{predicted:>13.2f}{error:>+8.0%}")
    rows = data[2]["workers"]["processes"]
    print(
        f"  2-worker run: {len(rows)} processes, "
        f"their task seconds {[round(r['seconds'], 1) for r in rows]}, "
        f"peak RSS {[round(r['peak_rss_bytes'] / 2**20) for r in rows]} MiB"
    )


def _hms(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cores", type=int, default=32, help="workers per machine")
    parser.add_argument("--disk", type=float, default=2e9, help="read bytes/s of one machine")
    parser.add_argument("--storage", type=float, default=2e10, help="read bytes/s of the shared storage")
    parser.add_argument("--network", type=float, default=1.25e9, help="driver network bytes/s")
    parser.add_argument("--write", type=float, default=1e9, help="driver write bytes/s")
    parser.add_argument("--startup", type=float, default=5.0, help="seconds to start the workers")
    parser.add_argument("--reports", type=Path, default=Path("out/folders"))
    args = parser.parse_args()
    print("Per-tensor task time on one core of this machine (best of 2; the machine may be shared):")
    a, b, per_param = measure()
    print(
        f"  fit: {a * 1e3:.1f} ms + {b * 1e9:.1f} ns per parameter = "
        f"{1 / b / 1e6:.2f} M parameters/s per core; "
        f"{per_param:.3f} .dcnn bytes per parameter"
    )
    assignment_speedup()
    predict(args, a, b, per_param)
    check(args.reports)
    return 0


if __name__ == "__main__":
    sys.exit(main())
