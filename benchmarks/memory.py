"""Peak memory of dcnn-convert compressing a 2.2 GB model: it must stay under 1 GiB.

Writes a safetensors file shaped like TinyLlama-1.1B (bfloat16, 1.1 billion parameters,
the largest tensors 65.5M elements: embeddings and lm_head), then times
``dcnn-convert model.safetensors -o model.dcnn`` and, for information, ``dcnn-convert
model.dcnn -o back.safetensors`` in child processes and reports each one's peak resident
memory. The second figure includes the pages of the .dcnn that the reader maps into memory
(file pages, which the kernel can drop at any time), so it grows with the file's size.
Compression runs once per ``--workers`` count: the driver's peak, each worker process's
peak (from ``--report``), parameters/s per worker (wall time) and per core (parameters per
CPU second: the child's, plus its workers' task CPU time from ``--report``; what one core
does, however busy the machine).
The first row compresses with the numpy code alone (``DCNN_NO_NATIVE=1``: no C encode or
assignment kernels), the same bytes as the native rows, so the table shows both side by side.

    python benchmarks/memory.py [--dir DIR] [--layers 22] [--workers 1,2] [--no-numpy]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dcformat import dtypes

LIMIT = 1 << 30
VOCAB, HIDDEN, INTERMEDIATE, KV = 32000, 2048, 5632, 256


def shapes(layers: int) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a TinyLlama-1.1B-like decoder."""
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}."
        out |= {
            p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
            p + "self_attn.k_proj.weight": (KV, HIDDEN),
            p + "self_attn.v_proj.weight": (KV, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            p + "mlp.gate_proj.weight": (INTERMEDIATE, HIDDEN),
            p + "mlp.up_proj.weight": (INTERMEDIATE, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, INTERMEDIATE),
            p + "input_layernorm.weight": (HIDDEN,),
            p + "post_attention_layernorm.weight": (HIDDEN,),
        }
    return out | {"model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)}


def write_model(path: Path, layers: int) -> None:
    """Random bfloat16 weights (std 0.02), written a block at a time."""
    rng = np.random.default_rng(0)
    header, offset = {}, 0
    for name, shape in shapes(layers).items():
        size = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for shape in shapes(layers).values():
            left = int(np.prod(shape))
            while left:
                n = min(left, 1 << 24)
                f.write(dtypes.bfloat16_bits(rng.standard_normal(n, dtype=np.float32) * 0.02).tobytes())
                left -= n


def measure(args: list[str], env: dict[str, str] | None = None) -> tuple[float, int, float]:
    """Seconds, peak resident bytes and CPU seconds (user + system, the child's own and its
    workers') of ``dcnn-convert ARGS`` in a child process with ``env`` added."""
    code = "import sys; from converters.cli import convert_main; sys.exit(convert_main(sys.argv[1:]))"
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", code, *args], env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(child.pid, 0)  # the child's own peak, not the largest so far
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        sys.exit(f"dcnn-convert {' '.join(args)} failed with status {child.returncode}")
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return time.perf_counter() - start, peak, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, help="work here (default: a temporary folder, removed)")
    parser.add_argument("--layers", type=int, default=22, help="decoder layers (22: 2.2 GB)")
    parser.add_argument("--workers", default="1,2", help="worker counts to compress with (default 1,2)")
    parser.add_argument("--no-numpy", action="store_true", help="skip the numpy-only row (the slow one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        source, dcnn, back = (
            Path(work) / "model.safetensors",
            Path(work) / "model.dcnn",
            Path(work) / "back.safetensors",
        )
        write_model(source, args.layers)
        largest = max(int(np.prod(s)) for s in shapes(args.layers).values())
        print(f"{source.stat().st_size:,} bytes of bfloat16 safetensors, largest tensor {largest:,} elements")
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, limit {LIMIT:,} bytes\n")
        params = sum(int(np.prod(s)) for s in shapes(args.layers).values())
        report = Path(work) / "report.json"
        print(
            "| direction | code | workers | seconds | M params/s per worker | M params/s per core"
            " | peak RSS | worker peak RSS | output bytes |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        peaks, digests = [], set()
        runs = [(int(w), "native") for w in args.workers.split(",")]
        if not args.no_numpy:
            runs.insert(0, (1, "numpy"))
        for workers, code in runs:
            argv = [
                str(source),
                "-o",
                str(dcnn),
                "-q",
                "--force",
                "--workers",
                str(workers),
                "--report",
                str(report),
            ]
            seconds, peak, cpu = measure(argv, {"DCNN_NO_NATIVE": "1" if code == "numpy" else "0"})
            peaks.append(peak)
            digests.add(hashlib.sha256(dcnn.read_bytes()).hexdigest())
            rows = json.loads(report.read_text())["workers"]["processes"]
            if workers > 1:  # pool workers are not the child's children (forkserver): their tasks' CPU
                cpu += sum(row["cpu_seconds"] for row in rows)
            worker_peak = max(row["peak_rss_bytes"] for row in rows)  # the driver's own with 1 worker
            print(
                f"| safetensors -> .dcnn | {code} | {workers} | {seconds:.0f}"
                f" | {params / seconds / workers / 1e6:.1f} | {params / cpu / 1e6:.1f} | "
                f"{peak / 2**20:,.0f} MiB | {worker_peak / 2**20:,.0f} MiB | {dcnn.stat().st_size:,} |",
                flush=True,
            )
        seconds, peak, _ = measure([str(dcnn), "-o", str(back), "-q"])
        print(
            f"| .dcnn -> safetensors (the .dcnn mapped) | native | - | {seconds:.0f} | - | - "
            f"| {peak / 2**20:,.0f} MiB | - | "
            f"{back.stat().st_size:,} |",
            flush=True,
        )
        same = "identical" if len(digests) == 1 else f"NOT identical ({len(digests)} different)"
        print(f"\nthe .dcnn files of every compression row are {same}")
        verdict = "under" if max(peaks) < LIMIT else "OVER"
        print(
            f"\nratio {source.stat().st_size / dcnn.stat().st_size:.2f}x; compressing peaked {verdict} 1 GiB"
        )
    sys.exit(0 if max(peaks) < LIMIT and len(digests) == 1 else 1)


if __name__ == "__main__":
    main()
