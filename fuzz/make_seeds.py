"""Small valid .dcnn files that cover every encoding: fuzzing seeds and mutation-test inputs.

python fuzz/make_seeds.py [OUT_DIR]   (default fuzz/seeds; the harness also reads spec/vectors/)

Each file is a few hundred bytes so that a test can flip every one of its bits.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

import dcformat


def sample_tensors() -> dict[str, tuple[dict, dict]]:
    """name -> (tensors for save_file, save_file options); deterministic. All but "compact" are
    written as a 1.1 writer wrote them; "compact" has the 1.2 forms (packed tables and codebook,
    unpadded sections, a zstd header), "narrow" the 1.3 RAW_NARROW tensors."""
    rng = np.random.default_rng(7)
    book = np.array([0.0, -0.5, 0.25, 1.0], np.float32)
    return {
        "raw": (
            {
                "w": rng.normal(size=(3, 4)).astype(np.float32),
                "i8": np.array([-128, 0, 5, 127], np.int8),
                "flags": np.array([True, False, True]),
                "bf16": dcformat.Raw(np.array([0x3F80, 0x8000, 0x7FC0], np.uint16), dtype="bfloat16"),
                "scalar": np.array(2.5, np.float64),
                "empty": np.zeros((0, 3), np.float32),
            },
            {"metadata": {"k": "v"}, "source": dcformat.Source("onnx", b"\x08\x07", {"opset": "17"})},
        ),
        "zstd": ({"z": dcformat.Raw(np.repeat(np.arange(8, dtype=np.int32), 64), zstd_level=3)}, {}),
        "dense": (
            {
                "d": dcformat.Quantized(book, rng.integers(0, 4, (6, 10)), (6, 10)),
                "h": dcformat.Quantized(
                    book.astype(np.float16), rng.integers(0, 3, 20), (20,), dtype="bfloat16"
                ),
                "one": dcformat.Quantized(np.array([0.75], np.float32), np.zeros(12, int), (3, 4)),
            },
            {"chunk_size": 16},
        ),
        "sparse": (
            {
                "s": dcformat.Quantized(book, [1, 2, 3, 1], (5, 20), positions=[0, 7, 40, 99], index_bits=3),
                "s1": dcformat.Quantized(book, [3], (9,), positions=[8], index_bits=1),
                "none": dcformat.Quantized(book, np.zeros(0, int), (2, 2), positions=np.zeros(0, int)),
            },
            {"chunk_size": 4},
        ),
        "extended": (  # format 1.1: scales and outliers (spec 5.6, 5.7)
            {
                "sc": dcformat.Quantized(
                    book,
                    rng.integers(0, 4, (4, 5)),
                    (4, 5),
                    dtype="float16",
                    scales=np.array([0.5, 2.0], np.float16),
                    rows_per_scale=2,
                ),
                "out": dcformat.Quantized(
                    book,
                    [1, 3],
                    (3, 6),
                    positions=[2, 9],
                    index_bits=2,
                    scales=np.array([1.0, 3.0, 0.25], np.float32),
                    outliers=([0, 9, 17], [40.0, -0.0, np.nan]),
                ),
                "z": dcformat.Quantized(
                    book,
                    rng.integers(0, 4, 200),
                    (200,),
                    outliers=(np.arange(0, 200, 4), np.tile(np.float32([8.0, -8.0]), 25)),
                ),
            },
            {"chunk_size": 8},
        ),
        "compact": (
            {
                "layer.0.weight": dcformat.Quantized(
                    np.concatenate([[0.0], np.sort(rng.normal(0, 0.1, 23))]).astype(np.float32),
                    rng.integers(1, 24, 40),
                    (8, 12),
                    positions=np.sort(rng.choice(96, 40, replace=False)),
                ),
                "layer.0.bias": np.linspace(-1, 1, 5).astype(np.float32),
                "layer.1.weight": dcformat.Quantized(
                    np.linspace(-1, 1, 9).astype(np.float32), rng.integers(0, 9, 30), (30,)
                ),
                "layer.1.bias": dcformat.Raw(np.zeros(40, np.float32), zstd_level=3),
            },
            {"compact": True, "chunk_size": 16},
        ),
        "narrow": (
            {
                "n16": dcformat.Narrow(rng.normal(size=(3, 5)).astype(np.float32)),
                "bf": dcformat.Narrow(np.array([1.5, -0.0, np.inf, np.nan]), "bfloat16"),
                "z": dcformat.Narrow(np.repeat(np.float32([0.5, -2.0]), 100), zstd_level=3),
                "n": np.int16([3, -3]),
            },
            {"compact": True},
        ),
    }


def sample_files() -> dict[str, bytes]:
    """name -> bytes of each sample file."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (tensors, options) in sample_tensors().items():
            path = Path(tmp) / f"{name}.dcnn"
            dcformat.save_file(tensors, path, **{"compact": False, **options})
            out[name] = path.read_bytes()
    return out


def main(argv: list[str]) -> None:
    out = Path(argv[1] if len(argv) > 1 else Path(__file__).parent / "seeds")
    out.mkdir(parents=True, exist_ok=True)
    for name, data in sample_files().items():
        (out / f"{name}.dcnn").write_bytes(data)
        print(f"{out / name}.dcnn: {len(data)} bytes")


if __name__ == "__main__":
    main(sys.argv)
