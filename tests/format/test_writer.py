"""The writer: atomic replacement, streaming, argument checks."""

import os

import numpy as np
import pytest

import dcformat


def partials(directory):
    return [p for p in os.listdir(directory) if p.endswith(".dcnn-partial")]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.dcnn"
    dcformat.save_file({"a": np.ones(3, np.float32)}, path)
    before = path.read_bytes()
    with pytest.raises(dcformat.EncodeError):
        dcformat.save_file({"a": np.zeros(3, np.float32), "b": np.array(["text"])}, path)
    assert path.read_bytes() == before
    assert partials(tmp_path) == []


def test_exception_inside_writer_discards_everything(tmp_path):
    path = tmp_path / "m.dcnn"
    with pytest.raises(RuntimeError), dcformat.Writer(path) as w:
        w.add("a", np.ones(10))
        raise RuntimeError("interrupted")
    assert not path.exists() and partials(tmp_path) == []


def test_stale_partials_of_the_same_target_are_removed(tmp_path):
    (tmp_path / ".m.dcnn.abc123.dcnn-partial").write_bytes(b"left by a killed writer")
    (tmp_path / ".other.dcnn.x.dcnn-partial").write_bytes(b"another target's")
    dcformat.save_file({"a": np.ones(2)}, tmp_path / "m.dcnn")
    assert partials(tmp_path) == [".other.dcnn.x.dcnn-partial"]


def test_streaming_writer_matches_save_file(tmp_path):
    tensors = {f"t{i}": np.arange(i * 10, dtype=np.float32) for i in range(5)}
    dcformat.save_file(tensors, tmp_path / "a.dcnn", metadata={"k": "v"})
    with dcformat.Writer(tmp_path / "b.dcnn", metadata={"k": "v"}) as w:
        for name, t in tensors.items():
            w.add(name, t)
    assert (tmp_path / "a.dcnn").read_bytes() == (tmp_path / "b.dcnn").read_bytes()


def test_sections_are_64_byte_aligned(tmp_path):
    path = tmp_path / "m.dcnn"
    dcformat.save_file({"a": np.ones(3, np.float32), "b": np.ones(7, np.float64)}, path)
    with dcformat.safe_open(path) as f:
        assert f.preamble.data_start % 64 == 0
        assert all(t.raw.offset % 64 == 0 for t in f.header.tensors)


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"": np.ones(1)}, "names"),
        ({"a": object()}, "expected Raw"),
        ({"a": np.array([1 + 2j])}, "unsupported dtype"),
        (lambda: {"a": dcformat.Raw(np.ones(2, np.float32), dtype="bfloat16")}, "cannot hold"),
    ],
)
def test_bad_tensors_raise_encode_error(tmp_path, tensors, message):
    with pytest.raises(dcformat.EncodeError, match=message):
        dcformat.save_file(tensors() if callable(tensors) else tensors, tmp_path / "m.dcnn")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"codes": [5]}, r"codes must lie in \[0, 3\)"),
        ({"codes": [1, 1], "positions": [3, 3]}, "strictly increasing"),
        ({"codes": [1], "positions": [9]}, r"positions must lie in \[0, 9\)"),
        ({"codes": [1], "positions": [2], "codebook": np.array([1, 2, 3], np.float32)}, "padding zero"),
        ({"codes": [1], "positions": [2], "index_bits": 17}, "index_bits"),
        ({"codes": np.zeros(9, int), "index_bits": 4}, "sparse codes only"),
        ({"codes": [1.5]}, "integers"),
        ({"codes": np.zeros(9, int), "dtype": "int8"}, "float dtype"),
        ({"codes": np.zeros(9, int), "codebook": np.zeros(0, np.float32)}, "1 to 65536"),
    ],
)
def test_bad_quantized_arguments(kwargs, message):
    args = {"codebook": np.array([0, 1, 2], np.float32), "shape": (3, 3)} | kwargs
    with pytest.raises(dcformat.EncodeError, match=message):
        dcformat.Quantized(**args)


def test_duplicate_name_and_metadata_types(tmp_path):
    with pytest.raises(dcformat.EncodeError, match="duplicate"), dcformat.Writer(tmp_path / "m.dcnn") as w:
        w.add("a", np.ones(1))
        w.add("a", np.ones(1))
    with pytest.raises(dcformat.EncodeError, match="strings"):
        dcformat.save_file({}, tmp_path / "m.dcnn", metadata={"k": 3})


def test_missing_directory_is_an_io_error(tmp_path):
    with pytest.raises(dcformat.DcnnIOError):
        dcformat.save_file({"a": np.ones(1)}, tmp_path / "no" / "m.dcnn")


def test_stored_size_matches_file_growth(tmp_path):
    book = np.array([0, 1, -1, 0.5], np.float32)
    q = dcformat.Quantized(book, np.arange(5000) % 4, (50, 100))
    dcformat.save_file({}, tmp_path / "empty.dcnn")
    dcformat.save_file({"q": q}, tmp_path / "q.dcnn")
    grown = (tmp_path / "q.dcnn").stat().st_size - (tmp_path / "empty.dcnn").stat().st_size
    assert abs(grown - dcformat.stored_size(q)) <= 64 + 8  # alignment and varint framing
