"""Decode speed of one large sparse tensor: dcnn (native and numpy paths) against zstd.

The tensor has ``--entries`` stored entries (10M by default) at ``--density`` (10%) with 5-bit
codes, like a pruned and quantized layer. Timed: ``safe_open(...).get_tensor`` (section reads,
CRC-32 checks, both Huffman streams, the scatter into a fresh zeroed array, the nonzeros check)
against zstd decompression of a level-19 frame of the same tensor's raw float32 bytes into a
fresh buffer. Symbols/s counts the symbols of both streams (codes and gaps, fillers included).
The format 1.1 rows decode the same tensor with a float16 scale per row, with exact outliers
(0.5% of the entries, float32), and with both (native path; same output bytes as plain).

    python benchmarks/decode.py [--entries N] [--density D] [--rounds R]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import measure, memcpy_fresh, memcpy_warm, print_table, warm_memory, with_env, zstd_frames

import dcformat
from dcformat.codec import decode as native


def sparse_tensor(entries: int, density: float, seed: int = 0) -> tuple[dcformat.Quantized, int]:
    """A (rows, 1000) tensor with ``entries`` kept weights, quantized to a 32-value codebook."""
    rng = np.random.default_rng(seed)
    cols = 1000
    rows = max(1, round(entries / density / cols))
    numel = rows * cols
    keep = rng.random(numel, dtype=np.float32) < density
    positions = np.flatnonzero(keep)
    book = np.concatenate(([0.0], np.sort(rng.normal(0, 0.05, 31)))).astype(np.float32)
    # Central values are the common ones, as k-means on pruned weights gives.
    codes = np.clip(np.abs(rng.normal(0, 8, positions.size)).astype(np.int64) + 1, 1, 31)
    return dcformat.Quantized(book, codes, (rows, cols), positions=positions), numel


def extended(tensor: dcformat.Quantized, scales: bool, outliers: bool, seed: int = 1) -> dcformat.Quantized:
    """The tensor with a scale per row and/or outliers at 0.5% of its entries."""
    rng = np.random.default_rng(seed)
    rows = tensor.shape[0]
    picked = np.sort(rng.choice(tensor.positions, max(1, tensor.positions.size // 200), replace=False))
    return dcformat.Quantized(
        tensor.codebook,
        tensor.codes,
        tensor.shape,
        positions=tensor.positions,
        scales=rng.uniform(0.5, 2, rows).astype(np.float16) if scales else None,
        outliers=(picked, rng.standard_t(1, picked.size).astype(np.float32)) if outliers else None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000_000)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    tensor, numel = sparse_tensor(args.entries, args.density)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sparse.dcnn"
        variants = {"scales": (True, False), "outliers": (False, True), "scales+outliers": (True, True)}
        dcformat.save_file(
            {"w": tensor, **{name: extended(tensor, *flags) for name, flags in variants.items()}}, path
        )
        f = dcformat.safe_open(path)
        info = f.info("w")
        record = f.header.tensors[0]
        symbols = record.codes.count + record.gaps.count
        dense = f.get_tensor("w")
        frame = zstd_frames({"w": dense})["w"]
        warm_memory(4 * dense.nbytes)
        print(f"dcformat native extension: {'built' if native.AVAILABLE else 'NOT built'}")
        print(
            f"tensor {info.shape} float32, {info.nonzeros:,} nonzeros ({info.nonzeros / numel:.1%}), "
            f"{info.entries:,} entries (fillers included), index_bits {info.index_bits}, "
            f"{symbols:,} Huffman symbols; dense {dense.nbytes / 1e6:,.1f} MB, "
            f"dcnn sections {info.stored_bytes / 1e6:.2f} MB, zstd-19 frame {len(frame) / 1e6:.2f} MB"
        )
        files = {threads: dcformat.safe_open(path, threads=threads) for threads in (1, 2)}
        decompressor = zstandard.ZstdDecompressor()
        methods = {}
        timed = {}
        if native.AVAILABLE:
            methods["dcnn native"] = with_env(False, lambda: files[1].get_tensor("w"))
            methods["dcnn native, threads=2"] = with_env(False, lambda: files[2].get_tensor("w"))
            timed["dcnn native"] = timed["dcnn native, threads=2"] = "get_tensor"
            for name in variants:
                methods[f"dcnn native, 1.1 {name}"] = with_env(False, lambda n=name: files[1].get_tensor(n))
                timed[f"dcnn native, 1.1 {name}"] = (
                    f"get_tensor, {files[1].info(name).stored_bytes:,} B stored"
                )
        methods["dcnn numpy path"] = with_env(True, lambda: files[1].get_tensor("w"))
        timed["dcnn numpy path"] = "get_tensor, DCNN_NO_NATIVE=1"
        methods["zstd -19 (decompress)"] = lambda: decompressor.decompress(frame)
        timed["zstd -19 (decompress)"] = "decompress only"
        methods["memcpy (fresh pages)"] = memcpy_fresh([dense])
        timed["memcpy (fresh pages)"] = "copy into new array"
        methods["memcpy (warm)"] = memcpy_warm(dense)
        timed["memcpy (warm)"] = "copy into mapped array"
        times = measure(methods, args.rounds)
        rates = {
            name: f"{symbols / min(times[name]) / 1e6:,.0f}" for name in methods if name.startswith("dcnn")
        }
        if native.AVAILABLE:
            for name in variants:
                row = f"dcnn native, 1.1 {name}"
                rates[row] += f" ({min(times[row]) / min(times['dcnn native']) - 1:+.1%} time vs plain)"
        print_table(
            f"Sparse tensor decode, {numel / 1e6:.0f}M elements, best of {args.rounds}",
            dense.nbytes,
            times,
            timed,
            "zstd -19 (decompress)",
            rates,
            "M symbols/s",
        )
        for f_ in (*files.values(), f):
            f_.close()


if __name__ == "__main__":
    main()
