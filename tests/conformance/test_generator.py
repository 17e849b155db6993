"""spec/vectors/generate.py regenerates every committed vector byte for byte."""

from pathlib import Path

import numpy as np

import dcformat
from spec.vectors import generate

VECTORS = Path(generate.__file__).resolve().parent
VALID = sorted(VECTORS.glob("*.dcnn"))
INVALID = sorted((VECTORS / "invalid").glob("*.dcnn"))


def test_generator_reproduces_the_committed_vectors(tmp_path):
    generate.main(["generate", str(tmp_path)])
    # zstd output may change with the library version: those files are compared by content.
    zstd_based = set(generate.ZSTD_VECTORS) | {
        n for n, (_, base, _) in generate.invalid_vectors().items() if base in generate.ZSTD_VECTORS
    }
    for committed in VALID + INVALID:
        fresh = tmp_path / committed.relative_to(VECTORS)
        if committed.stem in zstd_based:
            continue
        assert fresh.read_bytes() == committed.read_bytes(), f"{committed.name} is stale: run generate.py"
    for name in sorted(zstd_based & {p.stem for p in VALID}):
        a, b = dcformat.load_file(VECTORS / f"{name}.dcnn"), dcformat.load_file(tmp_path / f"{name}.dcnn")
        assert all(np.array_equal(a[k], b[k]) for k in a)
