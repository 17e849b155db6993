"""Corruption is detected: every single-bit flip and every truncation of a valid file.

A flip in the preamble or header is caught when the file is opened; a flip in a section
when that tensor is read (CRC-32 catches every single-bit error), the other tensors still
reading correctly; a flip in alignment padding by validate's padding check. validate
reports each, under the rule the damage breaks.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import dcformat
from dcformat.header import sections_of
from dcformat.layout import PREAMBLE_SIZE, align_up

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"fuzz_{name}", ROOT / "fuzz" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


harness = _load("harness")
SAMPLES = _load("make_seeds").sample_files()


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A directory for the many small files these tests write: tmpfs where there is one
    (rewriting a file on a disk file system can cost a flush per write)."""
    if not Path("/dev/shm").is_dir():
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir="/dev/shm") as directory:
        yield Path(directory)


PARTS = 4  # each sample's bits are split over this many tests, for pytest-xdist


def regions(data: bytes) -> list[tuple[int, int, str | None]]:
    """(start, stop, what) covering the file: "magic", "preamble", "header", "padding", or a
    section as the name of its tensor."""
    _, raw, _ = harness.split_file(data)
    header = harness.parse_header(raw)
    data_start = align_up(PREAMBLE_SIZE + len(raw))
    out = [
        (0, 8, "magic"),
        (8, PREAMBLE_SIZE, "preamble"),
        (PREAMBLE_SIZE, PREAMBLE_SIZE + len(raw), "header"),
    ]
    end = PREAMBLE_SIZE + len(raw)
    for tensor in header.tensors:
        for section in sections_of(tensor):
            start = data_start + section.offset
            out.append((end, start, "padding"))
            out.append((start, start + section.length, f"tensor:{tensor.name}"))
            end = start + section.length
    out.append((end, max(end, data_start), "padding"))  # a file without sections
    assert max(end, data_start) == len(data)
    return [r for r in out if r[0] < r[1]]


def expected_rule(what: str) -> str:
    return {"magic": "magic", "preamble": "preamble-crc", "header": "header-crc", "padding": "padding"}.get(
        what, "section-crc"
    )


@pytest.mark.parametrize("part", range(PARTS))
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_bit_flip_is_detected(scratch: Path, name: str, part: int) -> None:
    data = SAMPLES[name]
    good = dcformat.load_file(_write(scratch / "good.dcnn", data))
    path = scratch / "flipped.dcnn"
    for start, stop, what in regions(data):
        for bit in range(start * 8, stop * 8):
            if bit % PARTS != part:
                continue
            flipped = bytearray(data)
            flipped[bit // 8] ^= 1 << (bit % 8)
            _write(path, bytes(flipped))
            problems = dcformat.validate(path).problems
            tensor = what.removeprefix("tensor:") if what.startswith("tensor:") else None
            assert [(p.rule, p.tensor) for p in problems] == [(expected_rule(what), tensor)], (bit, what)
            if what in ("magic", "preamble", "header"):
                with pytest.raises(dcformat.DcnnError) as error:
                    dcformat.safe_open(path)
                assert error.value.rule == expected_rule(what)
            elif tensor is not None:
                with dcformat.safe_open(path) as f:
                    with pytest.raises(dcformat.ChecksumError) as error:
                        f.get_tensor(tensor)
                    assert error.value.rule == "section-crc" and error.value.tensor == tensor
                    other = next((n for n in f.keys() if n != tensor), None)
                    if other is not None:
                        assert np.array_equal(f.get_tensor(other), good[other], equal_nan=True)


def test_regions_cover_sections_and_padding() -> None:
    """The flip test above goes through sections, header padding and padding between sections."""
    kinds = {what.split(":")[0] for data in SAMPLES.values() for _, _, what in regions(data)}
    assert kinds == {"magic", "preamble", "header", "padding", "tensor"}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_truncation_is_detected(scratch: Path, name: str) -> None:
    data = SAMPLES[name]
    path = scratch / "cut.dcnn"
    for n in range(len(data)):
        _write(path, data[:n])
        assert [p.rule for p in dcformat.validate(path).problems] == ["truncated"], n
        with pytest.raises(dcformat.FormatError) as error:
            dcformat.load_file(path)
        assert error.value.rule == "truncated"


@pytest.mark.parametrize("extra", [b"\x00", bytes(64), b"\x89DCN", bytes(1000)])
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_appended_bytes_are_detected(scratch: Path, name: str, extra: bytes) -> None:
    path = _write(scratch / "long.dcnn", SAMPLES[name] + extra)
    assert [p.rule for p in dcformat.validate(path).problems] == ["file-size"]
    with pytest.raises(dcformat.FormatError) as error:
        dcformat.safe_open(path)
    assert error.value.rule == "file-size"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
