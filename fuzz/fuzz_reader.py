"""Atheris harness for the reader and the validator; fuzz/README.md says how to run it.

python fuzz/fuzz_reader.py [libFuzzer flags] [CORPUS_DIR ...] [--torch]

The first corpus directory (default fuzz/corpus) receives new inputs; spec/vectors,
spec/vectors/invalid and fuzz/seeds are added as seeds when present. ``--torch`` also
reads every input with framework="torch". Half the mutations are libFuzzer's byte-level
ones, half change one header field and fix the checksums (harness.mutate_file), so that
they reach the checks behind the CRCs. What is done with each input: harness.py.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["dcformat"]):
    import dcformat  # noqa: F401  (instrumented before harness imports it)

from harness import Target, mutate_file  # after the instrumented import

ROOT = Path(__file__).resolve().parents[1]


def corpus_args(argv: list[str]) -> list[str]:
    """argv with the default output corpus and the seed directories added."""
    flags = [a for a in argv[1:] if a.startswith("-")]
    dirs = [a for a in argv[1:] if not a.startswith("-")]
    if not dirs:
        dirs = [str(ROOT / "fuzz" / "corpus")]
        Path(dirs[0]).mkdir(exist_ok=True)
    seeds = [ROOT / "spec" / "vectors", ROOT / "spec" / "vectors" / "invalid", ROOT / "fuzz" / "seeds"]
    dirs += [str(d) for d in seeds if d.is_dir()]
    return [argv[0], *flags, *dirs]


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    """libFuzzer's custom mutator: a header mutation or a byte-level one, half and half."""
    rng = random.Random(seed)
    if rng.random() < 0.5:
        mutated = mutate_file(data, rng)
        if mutated is not None and len(mutated) <= max_size:
            return mutated
    return atheris.Mutate(data, max_size)


def main() -> None:
    frameworks = ("numpy", "torch") if "--torch" in sys.argv else ("numpy",)
    argv = [a for a in sys.argv if a != "--torch"]
    target = Target(frameworks)
    atheris.Setup(corpus_args(argv), target, custom_mutator=mutate)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
