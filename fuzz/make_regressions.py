"""Regression vectors for the bugs fuzzing found: python fuzz/make_regressions.py [VECTORS_DIR]

Writes spec/vectors/invalid/fuzz_NAME.dcnn with fuzz_NAME.expected (the rule id on its first
line), each a sample file (make_seeds.py) with exactly one rule broken and its checksums right,
and the valid spec/vectors/fuzz_NAME.dcnn with fuzz_NAME.npz (its decoded tensors).
Deterministic; fuzz/README.md lists the bug behind each vector.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from harness import assemble, parse_header, split_file
from make_seeds import sample_files

import dcformat
from dcformat import dcnn_pb2 as pb

Edit = Callable[[pb.Header, bytearray], None]


def _tensor(header: pb.Header, name: str) -> pb.Tensor:
    return next(t for t in header.tensors if t.name == name)


def _shape(name: str, shape: list[int]) -> Edit:
    def edit(header: pb.Header, area: bytearray) -> None:
        tensor = _tensor(header, name)
        tensor.ClearField("shape")
        tensor.shape.extend(shape)

    return edit


def _bool_byte(header: pb.Header, area: bytearray) -> None:
    area[_tensor(header, "flags").raw.offset] = 2


def _zstd_append(extra: Callable[[bytes], bytes]) -> Edit:
    def edit(header: pb.Header, area: bytearray) -> None:  # z is the last section of its file
        raw = _tensor(header, "z").raw
        added = extra(bytes(area[raw.offset : raw.offset + raw.length]))
        area += added
        raw.length += len(added)

    return edit


def _one_symbol_offsets(header: pb.Header, area: bytearray) -> None:
    codes = _tensor(header, "one").codes  # 12 symbols of one bit: chunks of 5 start at bits 5, 10
    codes.chunk_size = 5
    codes.chunk_offsets.extend([5, 11])


# name -> (sample, edit, expected rule or None for a valid file)
REGRESSIONS: dict[str, tuple[str, Edit, str | None]] = {
    "empty_huge_dim": ("raw", _shape("empty", [0, 2**63]), "shape"),
    "huge_empty_matrix": ("raw", _shape("empty", [2**33, 0]), None),
    "bool_value_2": ("raw", _bool_byte, "bool-value"),
    "zstd_trailing_bytes": ("zstd", _zstd_append(lambda frame: b"junk"), "zstd"),
    "zstd_two_frames": ("zstd", _zstd_append(lambda frame: frame), "zstd"),
    "one_symbol_chunk_offsets": ("dense", _one_symbol_offsets, "huffman-chunks"),
}


def build(sample: bytes, edit: Edit) -> bytes:
    """The sample with one edit to its header or data area, every checksum right."""
    preamble, raw, area = split_file(sample)
    header = parse_header(raw)
    area = bytearray(area)
    edit(header, area)
    return assemble(preamble, header, bytes(area))


def main(argv: list[str]) -> None:
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1] / "spec" / "vectors"
    (out / "invalid").mkdir(parents=True, exist_ok=True)
    samples = sample_files()
    for name, (sample, edit, rule) in REGRESSIONS.items():
        data = build(samples[sample], edit)
        if rule is None:
            path = out / f"fuzz_{name}.dcnn"
            path.write_bytes(data)
            np.savez(out / f"fuzz_{name}.npz", **dcformat.load_file(path))
        else:
            path = out / "invalid" / f"fuzz_{name}.dcnn"
            path.write_bytes(data)
            path.with_suffix(".expected").write_text(rule + "\n")
        print(f"{path}: {rule or 'valid'}")


if __name__ == "__main__":
    main(sys.argv)
