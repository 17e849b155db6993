"""Writes are crash-safe: a writer killed (SIGKILL) at any moment leaves the target either as
it was or complete, never a mix, and the next successful write removes what it left behind.

A child process rewrites one multi-MB target in a loop, alternating two contents of several
tensors; the test kills it after random delays (fixed seeds) and checks the target.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import dcformat

CHILD = """
import sys
from pathlib import Path

import numpy as np

import dcformat

target, refs, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
contents = []
for version in range(2):
    rng = np.random.default_rng(version)
    tensors = {f"raw{i}": rng.standard_normal((1024, 512)).astype(np.float32) for i in range(4)}
    book = np.linspace(-1, 1, 16, dtype=np.float32)
    tensors["codes"] = dcformat.Quantized(book, rng.integers(0, 16, 1 << 16), (256, 256))
    contents.append(tensors)
if mode == "refs":
    for version, tensors in enumerate(contents):
        dcformat.save_file(tensors, refs / f"v{version}.dcnn", metadata={"version": str(version)})
    sys.exit(0)
print("ready", flush=True)
version = 0
while True:
    with dcformat.Writer(target, metadata={"version": str(version)}) as writer:
        for name, tensor in contents[version].items():
            writer.add(name, tensor)
    print(f"wrote {version}", flush=True)
    version = 1 - version
"""


def _child(target: Path, refs: Path, mode: str) -> subprocess.Popen:
    package_root = str(Path(dcformat.__file__).resolve().parents[1])  # the dcformat under test
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
    }
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(target), str(refs), mode],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """The two complete files the writer alternates between."""
    refs = tmp_path_factory.mktemp("refs")
    child = _child(refs / "unused.dcnn", refs, "refs")
    assert child.wait(timeout=120) == 0
    return [(refs / f"v{version}.dcnn").read_bytes() for version in range(2)]


def _partials(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.dcnn-partial"))


@pytest.mark.parametrize("seed", range(4))
def test_sigkill_leaves_old_or_new(tmp_path: Path, references: list[bytes], seed: int) -> None:
    rng = random.Random(seed)
    target = tmp_path / "model.dcnn"
    target.write_bytes(references[1])
    assert len(references[0]) > 3 << 20
    interrupted = 0
    for _ in range(5):
        child = _child(target, tmp_path, "loop")
        assert child.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0.0, 0.2))  # a write takes 40 to 100 ms here
        child.send_signal(signal.SIGKILL)
        lines = child.communicate(timeout=60)[0].splitlines()
        assert child.returncode == -signal.SIGKILL
        after = target.read_bytes()
        assert after in references, f"killed after {lines}: the target is neither version"
        report = dcformat.validate(target)
        assert report.ok, report.problems
        with dcformat.safe_open(target) as f:
            assert f.metadata()["version"] == str(references.index(after))
        interrupted += bool(_partials(tmp_path))
    assert interrupted, "no kill landed inside a write"


def test_next_write_removes_leftovers(tmp_path: Path, references: list[bytes]) -> None:
    target = tmp_path / "model.dcnn"
    other = tmp_path / ".other.dcnn.keep.dcnn-partial"  # another target's leftover: not ours
    other.write_bytes(b"x")
    left = []
    for delay in (0.05, 0.15, 0.3):
        child = _child(target, tmp_path, "loop")
        assert child.stdout.readline() == "ready\n"
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
        left += [p for p in _partials(tmp_path) if p != other]
    assert left, "no kill left a temporary file behind; the test did not test removal"
    dcformat.save_file({"w": np.ones(3, np.float32)}, target)
    assert _partials(tmp_path) == [other]
    assert dcformat.validate(target).ok
