"""Corruption is detected: every single-bit flip and every truncation of a valid file.

A flip in the preamble, header or header padding is caught when the file is opened; a flip
in a section, or in the padding after it, when that tensor is read (CRC-32 catches every
single-bit error; padding must be zero), the other tensors still reading correctly.
validate reports each, under the rule the damage breaks and with the tensor it hit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import dcformat
from dcformat.file.header import sections_of
from dcformat.layout import PREAMBLE_SIZE, align_up
from fuzz import harness
from fuzz.make_seeds import sample_files

SAMPLES = sample_files()

PARTS = 4  # each sample's bits are split over this many tests, for pytest-xdist


def regions(data: bytes) -> list[tuple[int, int, str, str | None]]:
    """(start, stop, kind, tensor) covering the file. kind is "magic", "preamble", "header",
    "padding" or "section"; tensor names whose section, or padding after one, it is."""
    _, raw, _ = harness.split_file(data)
    header = harness.parse_header(raw)
    data_start = align_up(PREAMBLE_SIZE + len(raw))
    out = [(0, 8, "magic", None), (8, PREAMBLE_SIZE, "preamble", None)]
    out += [(PREAMBLE_SIZE, PREAMBLE_SIZE + len(raw), "header", None)]
    out += [(PREAMBLE_SIZE + len(raw), data_start, "padding", None)]
    end, owner = data_start, None
    for tensor in header.tensors:
        for section in sections_of(tensor):
            start = data_start + section.offset
            out.append((end, start, "padding", owner))
            out.append((start, start + section.length, "section", tensor.name))
            end, owner = start + section.length, tensor.name
    assert end == len(data)
    return [r for r in out if r[0] < r[1]]


RULES = {"magic": "magic", "preamble": "preamble-crc", "header": "header-crc", "padding": "padding"}


@pytest.mark.parametrize("part", range(PARTS))
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_bit_flip_is_detected(scratch: Path, name: str, part: int) -> None:
    data = SAMPLES[name]
    good = dcformat.load_file(_write(scratch / "good.dcnn", data))
    path = scratch / "flipped.dcnn"
    for start, stop, kind, tensor in regions(data):
        rule = RULES.get(kind, "section-crc")
        for bit in range(start * 8, stop * 8):
            if bit % PARTS != part:
                continue
            flipped = bytearray(data)
            flipped[bit // 8] ^= 1 << (bit % 8)
            _write(path, bytes(flipped))
            problems = dcformat.validate(path).problems
            assert [(p.rule, p.tensor) for p in problems] == [(rule, tensor)], (bit, kind)
            if tensor is None:
                with pytest.raises(dcformat.DcnnError) as error:
                    dcformat.safe_open(path)
                assert error.value.rule == rule
                continue
            with dcformat.safe_open(path) as f:
                with pytest.raises(dcformat.FormatError) as error:
                    f.get_tensor(tensor)
                assert (error.value.rule, error.value.tensor) == (rule, tensor)
                other = next((n for n in f.keys() if n != tensor), None)
                if other is not None:
                    assert np.array_equal(f.get_tensor(other), good[other], equal_nan=True)


def test_regions_cover_sections_and_padding() -> None:
    """The flip test above goes through sections, header padding and padding after sections."""
    kinds = {(kind, tensor is None) for data in SAMPLES.values() for _, _, kind, tensor in regions(data)}
    assert {("padding", True), ("padding", False), ("section", False), ("header", True)} <= kinds


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
