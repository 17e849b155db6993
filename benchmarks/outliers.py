"""Outliers as a separate stream (format 1.1, spec 5.7) against an escape symbol in the code
alphabet: the bytes each needs for the codes plus the outlier positions, on heavy-tailed
synthetic tensors (the outlier values cost the same either way and are left out).

Each tensor: ``--numel`` draws of a distribution, the ``--fraction`` largest |w| kept exact,
the rest uniformly quantized to 2^bits levels. Separate: the Huffman-coded codes (an outlier
position carries the most frequent code) + the positions as LEB128 gaps, zstd-compressed when
smaller, as the writer stores them. Escape: one Huffman stream over K+1 symbols, the escape
symbol at each outlier.

    python benchmarks/outliers.py [--numel N] [--fraction F]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dcformat.codec import huffman, varint


def coded_bytes(symbols: np.ndarray, alphabet: int) -> int:
    freqs = huffman.frequencies(symbols, alphabet)
    return -(-huffman.encoded_bits(freqs, huffman.code_lengths(freqs)) // 8)


def measure(w: np.ndarray, fraction: float, bits: int) -> tuple[int, int, int]:
    n_out = max(1, round(fraction * w.size))
    order = np.argsort(-np.abs(w), kind="stable")
    positions = np.sort(order[:n_out])
    inlier = np.ones(w.size, bool)
    inlier[positions] = False
    lo, hi = w[inlier].min(), w[inlier].max()
    k = 1 << bits
    codes = np.clip(np.rint((w - lo) / (hi - lo) * (k - 1)), 0, k - 1).astype(np.int64)
    common = np.bincount(codes[inlier], minlength=k).argmax()
    separate_codes = codes.copy()
    separate_codes[positions] = common
    gaps = varint.encode_gaps(positions)
    packed = zstandard.ZstdCompressor(level=19).compress(gaps)
    separate = coded_bytes(separate_codes, k) + min(len(gaps), len(packed))
    escaped = codes.copy()
    escaped[positions] = k
    escape = coded_bytes(escaped, k + 1)
    return n_out, separate, escape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=1 << 20)
    parser.add_argument("--fraction", type=float, default=0.005)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    draws = {
        "student-t df=1.5": lambda n: rng.standard_t(1.5, n),
        "student-t df=3": lambda n: rng.standard_t(3, n),
        "laplace": lambda n: rng.laplace(0, 1, n),
        "normal": lambda n: rng.normal(0, 1, n),
    }
    print(f"numel {args.numel}, outliers {args.fraction:.2%} (bytes of codes + positions)")
    print(f"{'distribution':<18} {'bits':>4} {'outliers':>9} {'separate':>10} {'escape':>10} {'sep/esc':>8}")
    for name, draw in draws.items():
        w = draw(args.numel).astype(np.float32)
        for bits in (4, 8):
            n_out, separate, escape = measure(w, args.fraction, bits)
            print(f"{name:<18} {bits:>4} {n_out:>9} {separate:>10} {escape:>10} {separate / escape:>8.3f}")


if __name__ == "__main__":
    main()
