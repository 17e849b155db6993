"""Hostile input: whatever bytes the reader and validator get, the answer is correct data or a
DcnnError, within a time and memory bound; each broken rule is reported under its own id.

A bounded, deterministic mutation run (fixed seeds): truncations at every offset, byte
substitutions, splices of two files and header mutations re-serialized with matching
checksums so that they reach the deep checks. ``fuzz/harness.py::exercise`` reads every
input through the whole public API, verified and not, and checks that the reader and the
validator agree. The long-running, coverage-guided counterpart is fuzz/fuzz_reader.py.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse  # noqa: F401  (the harness builds sparse matrices: timed checks exclude its import)
import zstandard

import dcformat
from dcformat import dcnn_pb2 as pb
from dcformat.layout import MAX_CHUNK_SIZE, PREAMBLE, PREAMBLE_SIZE
from fuzz import harness
from fuzz.make_seeds import sample_files

SAMPLES = sample_files()

ROOT = Path(__file__).resolve().parents[2]
TIME_LIMIT_S = 1.0  # per input of a few hundred bytes; the must-hold is ~1 s per few MB
MEMORY_LIMIT = 8 << 20  # peak traced allocation while validating one tiny hostile file


def check(path: Path, data: bytes) -> bool:
    """Exercise one input (raising on anything but a DcnnError) in bounded time; True if valid."""
    path.write_bytes(data)
    start = time.perf_counter()
    valid = harness.exercise(path)
    elapsed = time.perf_counter() - start
    assert elapsed < TIME_LIMIT_S, f"{elapsed:.2f} s for {len(data)} bytes"
    return valid


def test_samples_are_valid(scratch: Path) -> None:
    for name, data in SAMPLES.items():
        assert check(scratch / f"{name}.dcnn", data), name


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_truncation_at_every_offset(scratch: Path, name: str) -> None:
    data = SAMPLES[name]
    for n in range(len(data)):
        assert not check(scratch / "t.dcnn", data[:n]), n


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_byte_substitutions(scratch: Path, name: str) -> None:
    rng = random.Random(f"substitute {name}")
    data = SAMPLES[name]
    valid = 0
    for _ in range(150):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        assert mutated == data or not check(scratch / "s.dcnn", bytes(mutated))
        repaired = harness.repair_checksums(bytes(mutated))
        if repaired is not None:
            valid += check(scratch / "r.dcnn", repaired)
    assert valid < 50  # most substitutions behind repaired checksums still break a rule (11 to 22 valid)


def test_splices_of_two_files(scratch: Path) -> None:
    rng = random.Random("splice")
    names = sorted(SAMPLES)
    for _ in range(300):
        a, b = SAMPLES[rng.choice(names)], SAMPLES[rng.choice(names)]
        spliced = a[: rng.randrange(len(a) + 1)] + b[rng.randrange(len(b) + 1) :]
        check(scratch / "s.dcnn", spliced)
        repaired = harness.repair_checksums(spliced)
        if repaired is not None:
            check(scratch / "r.dcnn", repaired)


@pytest.mark.parametrize("seed", range(4))
def test_header_mutations(scratch: Path, seed: int) -> None:
    rng = random.Random(seed)
    names = sorted(SAMPLES)
    rejected = 0
    for _ in range(300):
        data = SAMPLES[rng.choice(names)]
        for _ in range(rng.choice([1, 1, 2, 3])):
            data = harness.mutate_file(data, rng) or data
        rejected += not check(scratch / "h.dcnn", data)
    assert rejected > 200  # 253 to 268: most single-field changes break a rule


# -- each rule, broken on purpose -------------------------------------------------------------

Edit = Callable[[pb.Header, bytearray], None]


def _tensor(header: pb.Header, name: str) -> pb.Tensor:
    return next(t for t in header.tensors if t.name == name)


def _set(name: str, path: str, value: object) -> Edit:
    """Set a field, addressed like "codes.chunk_size", of tensor ``name``."""

    def edit(header: pb.Header, area: bytearray) -> None:
        *parents, field = path.split(".")
        message = _tensor(header, name)
        for parent in parents:
            message = getattr(message, parent)
        if isinstance(value, list):
            message.ClearField(field)
            getattr(message, field).extend(value)
        else:
            setattr(message, field, value)

    return edit


def _edit(fn: Callable[[pb.Header], None]) -> Edit:
    return lambda header, area: fn(header)


def _bool_byte(header: pb.Header, area: bytearray) -> None:
    area[_tensor(header, "flags").raw.offset] = 2


def _zstd_append(extra: Callable[[bytes], bytes]) -> Edit:
    def edit(header: pb.Header, area: bytearray) -> None:  # z is the last section of its file
        raw = _tensor(header, "z").raw
        added = extra(bytes(area[raw.offset : raw.offset + raw.length]))
        area += added
        raw.length += len(added)

    return edit


def _zstd_bomb(header: pb.Header, area: bytearray) -> None:
    """A frame of 64 MiB of zeros (2 KB compressed) whose header claims the 2048 bytes expected."""
    raw = _tensor(header, "z").raw
    frame = bytearray(zstandard.ZstdCompressor().compress(bytes(64 << 20)))
    assert frame[4] == 0x80  # descriptor: 4-byte content size after the window byte, no dictionary
    frame[6:10] = (2048).to_bytes(4, "little")
    area[raw.offset :] = frame
    raw.length = len(frame)


def _chunk_offsets(fn: Callable[[list[int]], list[int]]) -> Edit:
    def edit(header: pb.Header, area: bytearray) -> None:
        codes = _tensor(header, "d").codes
        offsets = fn(list(codes.chunk_offsets))
        codes.ClearField("chunk_offsets")
        codes.chunk_offsets.extend(offsets)

    return edit


def _drop_codebook_value(header: pb.Header) -> None:
    codebook = _tensor(header, "d").codebook
    codebook.values = codebook.values[:-4]


def _duplicate_name(header: pb.Header) -> None:
    header.tensors[1].name = header.tensors[0].name


# name -> (sample, edit, expected rule)
RULE_CASES: dict[str, tuple[str, Edit, str]] = {
    # Huffman tables (spec 7.1); tensor d has K = 4
    "oversubscribed": ("dense", _set("d", "codes.code_lengths", bytes([1, 1, 1, 1])), "huffman-table"),
    "incomplete": ("dense", _set("d", "codes.code_lengths", bytes([2, 2, 2, 0])), "huffman-table"),
    "incomplete_long": ("dense", _set("d", "codes.code_lengths", bytes([1, 2, 16, 16])), "huffman-table"),
    "one_symbol_length_2": ("dense", _set("one", "codes.code_lengths", bytes([2])), "huffman-table"),
    "length_17": ("dense", _set("d", "codes.code_lengths", bytes([1, 2, 3, 17])), "huffman-table"),
    "length_255": ("dense", _set("d", "codes.code_lengths", bytes([255, 1, 2, 2])), "huffman-table"),
    "empty_table": ("dense", _set("d", "codes.code_lengths", bytes(4)), "huffman-table"),
    "alphabet_above_k": ("dense", _set("d", "codes.code_lengths", bytes([2, 2, 2, 2, 0])), "huffman-table"),
    "alphabet_below_k": ("dense", _edit(_drop_codebook_value), "huffman-table"),
    "gap_alphabet_not_2b": ("sparse", _set("s", "index_bits", 4), "huffman-table"),
    "k_0": ("dense", _set("d", "codebook.values", b""), "codebook"),
    "k_65537": ("dense", _set("d", "codebook.values", bytes(4 * 65537)), "codebook"),
    "codebook_int": ("dense", _set("d", "codebook.dtype", pb.INT32), "codebook"),
    # chunks (spec 8); tensor d: 60 symbols in chunks of 16, offsets of chunks 1..3
    "chunk_offsets_reversed": ("dense", _chunk_offsets(lambda o: o[::-1]), "huffman-chunks"),
    "chunk_offset_zero": ("dense", _chunk_offsets(lambda o: [0, *o[1:]]), "huffman-chunks"),
    "chunk_offset_repeated": ("dense", _chunk_offsets(lambda o: [o[0], o[0], o[2]]), "huffman-chunks"),
    "chunk_offset_past_end": ("dense", _chunk_offsets(lambda o: [*o[:-1], 10**6]), "huffman-chunks"),
    "chunk_offset_2_64": ("dense", _chunk_offsets(lambda o: [*o[:-1], 2**64 - 1]), "huffman-chunks"),
    "chunk_offset_missing": ("dense", _chunk_offsets(lambda o: o[:-1]), "huffman-chunks"),
    "chunk_offset_extra": ("dense", _chunk_offsets(lambda o: [*o, o[-1] + 1]), "huffman-chunks"),
    # 'd' codes with lengths all 2: the bound of spec 8 fixes every offset, so the header check sees it
    "chunk_offset_off_by_one": ("dense", _chunk_offsets(lambda o: [o[0] + 1, *o[1:]]), "huffman-chunks"),
    "chunk_size_0": ("dense", _set("d", "codes.chunk_size", 0), "huffman-chunks"),
    "chunk_size_over_max": ("dense", _set("d", "codes.chunk_size", MAX_CHUNK_SIZE + 1), "huffman-chunks"),
    "one_symbol_chunk_offsets": (
        "dense",
        lambda h, a: (
            _set("one", "codes.chunk_size", 5)(h, a),
            _set("one", "codes.chunk_offsets", [5, 11])(h, a),
        ),
        "huffman-chunks",
    ),
    # stream sizes
    "bit_length_2_64": ("dense", _set("d", "codes.bit_length", 2**64 - 1), "huffman-data"),
    "bit_length_short": ("dense", _set("d", "codes.bit_length", 60), "huffman-data"),
    "count_2_64": ("dense", _set("d", "codes.count", 2**64 - 1), "huffman-chunks"),
    "stream_data_2_64": ("dense", _set("d", "codes.data.length", 2**64 - 1), "huffman-data"),
    # counts and positions (spec 5.2, 5.3); tensor s: shape (5, 20), 15 entries, last position 99
    "dense_count_not_numel": ("dense", _set("d", "shape", [6, 11]), "counts"),
    "sparse_counts_differ": ("sparse", _set("s", "gaps.count", 14), "counts"),
    "sparse_count_above_numel": ("sparse", _set("s", "shape", [14]), "counts"),
    "gaps_past_end": ("sparse", _set("s", "shape", [5, 19]), "positions"),
    "index_bits_0": ("sparse", _set("s", "index_bits", 0), "index-bits"),
    "index_bits_17": ("sparse", _set("s", "index_bits", 17), "index-bits"),
    "index_bits_2_32": ("sparse", _set("s", "index_bits", 2**32 - 1), "index-bits"),
    "padding_zero": (
        "sparse",
        _set("s", "codebook.values", np.array([1, 2, 3, 4], "<f4").tobytes()),
        "padding-zero",
    ),
    # shapes and declared sizes that overflow 64 bits
    "rank_33": ("raw", _set("empty", "shape", [1] * 32 + [0]), "shape"),
    "numel_2_64": ("raw", _set("w", "shape", [2**32, 2**32]), "shape"),
    "numel_2_128": ("raw", _set("w", "shape", [2**64 - 1, 2**64 - 1]), "shape"),
    "numel_above_2_56": ("raw", _set("w", "shape", [2**28, 2**28 + 1]), "shape"),
    "empty_dim_2_63": ("raw", _set("empty", "shape", [0, 2**63]), "shape"),
    "empty_dims_2_80": ("raw", _set("empty", "shape", [2**40, 0, 2**40]), "shape"),
    "expansion": ("dense", _set("d", "shape", [6, 10, 1000]), "expansion"),
    "raw_size": ("raw", _set("w", "shape", [3, 5]), "raw-size"),
    "raw_length_2_64": ("raw", _set("w", "raw.length", 2**64 - 1), "raw-size"),
    "section_offset_2_64": ("raw", _set("w", "raw.offset", 2**64 - 64), "section-layout"),
    "section_empty": ("raw", _set("empty", "raw.length", 0), "section-layout"),
    "nonzeros_above_numel": ("raw", _set("w", "nonzeros", 13), "nonzeros"),
    "nonzeros_2_64": ("raw", _set("w", "nonzeros", 2**64 - 1), "nonzeros"),
    "nonzeros_wrong": ("sparse", _set("s", "nonzeros", 3), "nonzeros"),
    # enums and names
    "dtype_unknown": ("raw", _set("i8", "dtype", 99), "dtype"),
    "dtype_negative": ("raw", _set("i8", "dtype", -1), "dtype"),
    "coded_int": ("dense", _set("d", "dtype", pb.INT32), "dtype"),
    "encoding_unknown": ("raw", _set("i8", "encoding", 7), "encoding"),
    "encoding_unspecified": ("raw", _set("i8", "encoding", 0), "encoding"),
    "compression_unknown": ("zstd", _set("z", "compression", 5), "encoding"),
    "dense_with_gaps": ("dense", _set("d", "index_bits", 3), "encoding"),
    "name_empty": ("raw", _set("w", "name", ""), "tensor-name"),
    "name_4097_bytes": ("raw", _set("w", "name", "é" * 2049), "tensor-name"),
    "name_duplicate": ("raw", _edit(_duplicate_name), "tensor-name"),
    # section contents
    "bool_value_2": ("raw", _bool_byte, "bool-value"),
    "zstd_trailing_bytes": ("zstd", _zstd_append(lambda frame: b"junk"), "zstd"),
    "zstd_two_frames": ("zstd", _zstd_append(lambda frame: frame), "zstd"),
    "zstd_bomb": ("zstd", _zstd_bomb, "zstd"),
    "zstd_skippable_frame": ("zstd", _zstd_append(lambda frame: b"\x50\x2a\x4d\x18\x00\x00\x00\x00"), "zstd"),
}


def build(sample: str, edit: Edit) -> bytes:
    preamble, raw, area = harness.split_file(SAMPLES[sample])
    header = harness.parse_header(raw)
    area = bytearray(area)
    edit(header, area)
    return harness.assemble(preamble, header, bytes(area))


@pytest.mark.parametrize("case", sorted(RULE_CASES))
def test_rule_reported(scratch: Path, case: str) -> None:
    sample, edit, rule = RULE_CASES[case]
    path = scratch / f"{case}.dcnn"
    assert not check(path, build(sample, edit))
    tracemalloc.start()
    try:
        report = dcformat.validate(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_LIMIT
    assert [p.rule for p in report.problems] == [rule]
    with pytest.raises(dcformat.DcnnError) as error:
        dcformat.load_file(path)
    assert error.value.rule == rule


def _with_preamble(data: bytes, **fields: int) -> bytes:
    values = dict(
        zip(
            ("magic", "major", "minor", "length", "header_crc", "crc"),
            PREAMBLE.unpack_from(data),
            strict=True,
        )
    )
    values.update(fields)
    head = PREAMBLE.pack(*values.values())[:-4]
    return head + zlib.crc32(head).to_bytes(4, "little") + data[PREAMBLE_SIZE:]


@pytest.mark.parametrize(
    ("case", "rule"),
    [
        ("header_length_2_32", "header-size"),
        ("header_length_past_end", "truncated"),
        ("major_0", "version"),
        ("overlong_varint", "header-parse"),
        ("empty_file", "truncated"),
        ("zip_file", "magic"),
    ],
)
def test_preamble_and_header_rules(scratch: Path, case: str, rule: str) -> None:
    data = SAMPLES["raw"]
    if case == "header_length_2_32":
        data = _with_preamble(data, length=2**32 - 1)
    elif case == "header_length_past_end":
        data = _with_preamble(data, length=len(data))
    elif case == "major_0":
        data = _with_preamble(data, major=0)
    elif case == "overlong_varint":  # a tensor whose shape is an 11-byte varint
        data = harness.assemble(data[:PREAMBLE_SIZE], b"\x22\x0e\x0a\x01w\x10" + b"\xff" * 10 + b"\x01", b"")
    elif case == "empty_file":
        data = b""
    else:
        data = b"PK\x03\x04" + bytes(100)
    path = scratch / "p.dcnn"
    assert not check(path, data)
    assert [p.rule for p in dcformat.validate(path).problems] == [rule]


def test_huge_empty_matrix(scratch: Path) -> None:
    """An empty tensor may have 2^33 rows; as CSR that would be a 64 GiB row index."""
    path = scratch / "rows.dcnn"
    assert check(path, build("raw", _set("empty", "shape", [2**33, 0])))
    with dcformat.safe_open(path) as f:
        assert f.get_tensor("empty").shape == (2**33, 0)
        with pytest.raises(dcformat.LimitError) as error:
            f.get_sparse("empty")
        assert error.value.rule == "expansion"
        assert f.get_sparse("w").shape == (3, 4)


VECTORS = ROOT / "spec" / "vectors"


@pytest.mark.parametrize(
    "vector", sorted(VECTORS.glob("*.dcnn")) + sorted(VECTORS.glob("invalid/*.dcnn")), ids=lambda p: p.stem
)
def test_spec_vectors_through_the_whole_api(scratch: Path, vector: Path) -> None:
    """Valid vectors read consistently everywhere; invalid ones (fuzzing's regressions among
    them, see spec/vectors/generate.py) fail everywhere, with DcnnErrors only."""
    assert check(scratch / vector.name, vector.read_bytes()) == (vector.parent == VECTORS)


def test_validate_cli_one_line_per_problem(scratch: Path) -> None:
    """dcnn-validate on every rule case at once: exit status 1, one line each naming its rule,
    nothing on stderr."""
    paths = []
    for case, (sample, edit, _) in sorted(RULE_CASES.items()):
        paths.append(scratch / f"{case}.dcnn")
        paths[-1].write_bytes(build(sample, edit))
    package_root = str(Path(dcformat.__file__).resolve().parents[1])
    result = subprocess.run(
        [sys.executable, "-m", "dcformat.cli", *map(str, paths)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": package_root},
        timeout=120,
    )
    assert result.returncode == 1 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == len(paths)
    for path, line in zip(paths, lines, strict=True):
        assert line.startswith(f"{path}: ") and line.endswith(f"[{RULE_CASES[path.stem][2]}]"), line
