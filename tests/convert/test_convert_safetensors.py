"""safetensors to .dcnn and back: streamed, exact where stored exactly, metadata kept."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open as st_open
from safetensors.torch import load_file as st_load
from safetensors.torch import save_file as st_save

import dcformat
from converters.conversion import convert
from converters.errors import ConvertError
from converters.formats.safetensors_file import read_safetensors
from dcformat import DcnnError

torch.manual_seed(0)
EXACT = {
    "f32.bias": torch.randn(7),
    "f16": torch.randn(3, 5).half(),
    "bf16": torch.randn(4, 4).bfloat16(),
    "f64": torch.randn(2, 3).double(),
    "i8": torch.randint(-128, 127, (9,), dtype=torch.int8),
    "i16": torch.randint(-999, 999, (3, 3), dtype=torch.int16),
    "i32": torch.randint(-(2**31), 2**31 - 1, (5,), dtype=torch.int32),
    "position_ids": torch.arange(512).unsqueeze(0),
    "u8": torch.randint(0, 255, (6,), dtype=torch.uint8),
    "u16": torch.randint(0, 60000, (6,), dtype=torch.int32).to(torch.uint16),
    "u32": torch.arange(5, dtype=torch.int64).to(torch.uint32),
    "u64": torch.arange(5, dtype=torch.int64).to(torch.uint64),
    "mask": torch.rand(3, 3) > 0.5,
    "scalar": torch.tensor(3.5),
    "empty": torch.zeros(0, 4),
}
COMPRESSED = {
    "fc.weight": torch.randn(64, 96),
    "emb.weight": torch.randn(128, 32).bfloat16(),
    "conv.weight": torch.randn(32, 16, 3, 3).half(),
}
METADATA = {"format": "pt", "note": "kept"}


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    st_save({**EXACT, **COMPRESSED}, str(path), metadata=METADATA)
    return path


def test_round_trip_is_exact_for_stored_tensors_and_the_decoded_values(model: Path, tmp_path: Path) -> None:
    dcnn, back = tmp_path / "m.dcnn", tmp_path / "back.safetensors"
    report = convert(model, dcnn)
    convert(dcnn, back)
    restored = st_load(str(back))
    assert list(restored) == list(st_load(str(model)))  # same names in the same order
    decoded = dcformat.load_file(dcnn, framework="torch")
    for name, tensor in EXACT.items():
        assert restored[name].dtype == tensor.dtype and restored[name].shape == tensor.shape
        assert torch.equal(restored[name], decoded[name]), name
        if tensor.dtype in (torch.float32, torch.float64):  # stored as float16: 11 significant bits
            assert torch.equal(restored[name], tensor.half().to(tensor.dtype)), name
        else:
            assert torch.equal(restored[name], tensor), name
    for name, tensor in COMPRESSED.items():
        assert restored[name].dtype == tensor.dtype
        assert torch.equal(restored[name].view(torch.uint8), decoded[name].view(torch.uint8)), name
        assert len(torch.unique(restored[name])) <= 256
        error = (restored[name].double() - tensor.double()).norm() / tensor.double().norm()
        assert 0 < error < 0.03
    rows = {row.name: row for row in report.tensors}
    assert {name for name, row in rows.items() if row.encoding not in ("RAW", "RAW_NARROW")} == set(
        COMPRESSED
    )
    assert rows["fc.weight"].weight_bits <= 8 and report.errors["fc.weight"] == pytest.approx(
        float((decoded["fc.weight"] - COMPRESSED["fc.weight"]).norm() / COMPRESSED["fc.weight"].norm()),
        rel=1e-5,
    )
    assert report.dcnn_bytes == dcnn.stat().st_size and report.ratio > 1.5


def test_metadata_is_kept_both_ways(model: Path, tmp_path: Path) -> None:
    dcnn, back = tmp_path / "m.dcnn", tmp_path / "back.safetensors"
    convert(model, dcnn)
    with dcformat.safe_open(dcnn) as f:
        assert f.metadata() == METADATA and f.source().format == "safetensors"
        assert json.loads(f.source().attributes["compression"])["fc_bits"] == 8
    convert(dcnn, back)
    with st_open(str(back), "pt") as f:
        assert f.metadata() == METADATA


def test_reader_reads_one_tensor_at_a_time(model: Path) -> None:
    """Tensors are read as they are iterated: a file cut short after its header was checked
    gives every tensor before the cut, then an error."""
    opened = read_safetensors(model)
    assert opened.nbytes == sum(t.numel() * t.element_size() for t in {**EXACT, **COMPRESSED}.values())
    with open(model, "r+b") as f:
        f.truncate(model.stat().st_size - 1)
    names = []
    with pytest.raises(ConvertError, match="cut short"):
        names.extend(weight.name for weight in opened.weights())
    data = model.read_bytes()
    header = json.loads(data[8 : 8 + struct.unpack("<Q", data[:8])[0]])
    keys = [k for k in header if k != "__metadata__"]
    last = max(keys, key=lambda k: header[k]["data_offsets"][1])  # the tensor the cut damages
    assert names == keys[: keys.index(last)]


def rewrite_header(path: Path, edit) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    text = json.dumps(edit(header)).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n :])


def set_entry(name: str, key: str, value):
    def edit(header):
        header[name][key] = value
        return header

    return edit


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:5]), "too short"),
        (lambda p: p.write_bytes(p.read_bytes()[:-1]), "tensors take"),
        (lambda p: p.write_bytes(struct.pack("<Q", 1 << 40) + p.read_bytes()[8:]), "header length"),
        (lambda p: p.write_bytes(struct.pack("<Q", 4) + b"{x:}" + b"\0" * 8), "not JSON"),
        (lambda p: p.write_bytes(struct.pack("<Q", 2) + b"[]"), "not a JSON object"),
        (lambda p: rewrite_header(p, set_entry("i8", "dtype", "F8_E4M3")), "unsupported dtype F8_E4M3"),
        (lambda p: rewrite_header(p, set_entry("i8", "shape", [-9])), "bad shape"),
        (lambda p: rewrite_header(p, set_entry("i8", "shape", [10])), "its shape needs"),
        (lambda p: rewrite_header(p, set_entry("i8", "data_offsets", [0])), "bad data_offsets"),
        (lambda p: rewrite_header(p, set_entry("i8", "data_offsets", [0, 9])), "does not start"),
        (lambda p: rewrite_header(p, lambda h: {**h, "__metadata__": {"a": 1}}), "__metadata__"),
        (lambda p: rewrite_header(p, lambda h: {**h, "x": {"dtype": "F32"}}), "lacks"),
    ],
)
def test_broken_files_raise_a_convert_error_and_write_nothing(model, tmp_path, corrupt, match) -> None:
    corrupt(model)
    out = tmp_path / "out.dcnn"
    with pytest.raises(ConvertError, match=match):
        convert(model, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_a_corrupt_dcnn_leaves_no_partial_safetensors(model: Path, tmp_path: Path) -> None:
    dcnn = tmp_path / "m.dcnn"
    convert(model, dcnn)
    data = bytearray(dcnn.read_bytes())
    data[-1] ^= 0xFF  # the last section: decoding fails after earlier tensors were written
    dcnn.write_bytes(bytes(data))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(DcnnError, match="checksum"):
        convert(dcnn, tmp_path / "out.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
