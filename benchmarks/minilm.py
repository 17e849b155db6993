"""Compress all-MiniLM-L6-v2 with several settings and measure what it costs in quality.

For each setting: safetensors -> .dcnn -> safetensors, the result loaded by
sentence-transformers, and the cosine similarity of its embeddings of 16 fixed sentences
to the original model's. Prints a markdown table.

    python benchmarks/minilm.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts the checkout's examples/ on the path)

from converters.compress.config import PAPER, SAFE, apply_options
from converters.conversion import convert
from examples.minilm import embed, model_dir, restore

SETTINGS = [
    ("default (8 bits, density init)", SAFE, []),
    ("--bits 7", SAFE, [("bits", "7")]),
    ("--bits 6", SAFE, [("bits", "6")]),
    ("--bits 5", SAFE, [("bits", "5")]),
    ("--bits 4", SAFE, [("bits", "4")]),
    ("--paper (8-bit conv, 5-bit fc, linear init)", PAPER, []),
    ("--bits 6 --prune 0.3", SAFE, [("bits", "6"), ("prune", "0.3")]),
    ("--bits 6 --prune 0.5", SAFE, [("bits", "6"), ("prune", "0.5")]),
]


def main() -> None:
    source = model_dir() / "model.safetensors"
    reference = embed(model_dir())
    print(f"all-MiniLM-L6-v2: {source.stat().st_size:,} bytes of safetensors\n")
    print("| setting | .dcnn bytes | ratio | cosine mean | cosine min | convert s |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as work:
        for i, (label, base, options) in enumerate(SETTINGS):
            dcnn = Path(work) / f"minilm-{i}.dcnn"
            start = time.perf_counter()
            report = convert(source, dcnn, apply_options(base, options))
            seconds = time.perf_counter() - start
            cosine = (embed(restore(dcnn, Path(work) / f"model-{i}")) * reference).sum(axis=1)
            print(
                f"| {label} | {report.dcnn_bytes:,} | {report.ratio:.2f}x | {cosine.mean():.4f} "
                f"| {cosine.min():.4f} | {seconds:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
