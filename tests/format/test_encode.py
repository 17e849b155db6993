"""Encode once: dcformat.encode, Writer.add_encoded and the encoding registry."""

from pathlib import Path

import numpy as np
import pytest

import dcformat
from dcformat import dcnn_pb2 as pb
from dcformat.encodings import ENCODINGS
from dcformat.file.header import sections_of


def tensors() -> dict[str, dcformat.Raw | dcformat.Quantized | np.ndarray]:
    rng = np.random.default_rng(0)
    book = np.array([0.0, -0.5, 0.25, 1.0], np.float32)
    positions = np.sort(rng.choice(600, 40, replace=False))
    return {
        "raw": rng.standard_normal((7, 5)).astype(np.float32),
        "zstd": dcformat.Raw(np.repeat(np.arange(8, dtype=np.int32), 64), zstd_level=3),
        "dense": dcformat.Quantized(book, rng.integers(0, 4, (20, 30)), (20, 30)),
        "sparse": dcformat.Quantized(book, rng.integers(1, 4, 40), (20, 30), positions=positions),
    }


def test_add_encoded_writes_the_same_file_as_add(tmp_path: Path) -> None:
    with dcformat.Writer(tmp_path / "add.dcnn") as writer:
        for name, tensor in tensors().items():
            writer.add(name, tensor)
    encoded = [dcformat.encode(name, tensor) for name, tensor in tensors().items()]
    with dcformat.Writer(tmp_path / "encoded.dcnn") as writer:
        for e in encoded:
            writer.add_encoded(e)
    assert (tmp_path / "add.dcnn").read_bytes() == (tmp_path / "encoded.dcnn").read_bytes()
    with dcformat.safe_open(tmp_path / "encoded.dcnn") as f:
        assert [f.info(e.name).encoding for e in encoded] == ["RAW", "RAW", "DENSE_CODES", "SPARSE_CODES"]
        assert [pb.Encoding.Name(e.record.encoding) for e in encoded] == [
            f.info(e.name).encoding for e in encoded
        ]


def test_the_file_holds_the_encoded_bytes_as_they_are(tmp_path: Path) -> None:
    """add_encoded copies the payloads into the file unchanged."""
    path = tmp_path / "t.dcnn"
    encoded = {name: dcformat.encode(name, t, chunk_size=64) for name, t in tensors().items()}
    with dcformat.Writer(path, chunk_size=64) as writer:
        for e in encoded.values():
            writer.add_encoded(e)
    data = path.read_bytes()
    with dcformat.safe_open(path) as f:
        for name, e in encoded.items():
            assert dcformat.encode("t", tensors()[name], 64).stored_bytes == dcformat.stored_size(
                tensors()[name], chunk_size=64
            )
            sections = list(sections_of(f.header.tensors[list(encoded).index(name)]))
            assert len(sections) == len(e.payloads)
            for section, (_, payload) in zip(sections, e.payloads, strict=True):
                start = f.preamble.data_start + section.offset
                assert data[start : start + section.length] == bytes(payload)


def test_add_encoded_checks_names_and_state(tmp_path: Path) -> None:
    encoded = dcformat.encode("w", np.zeros(4, np.float32))
    writer = dcformat.Writer(tmp_path / "w.dcnn")
    writer.add_encoded(encoded)
    with pytest.raises(dcformat.EncodeError, match="duplicate"):
        writer.add_encoded(dcformat.encode("w", np.ones(2, np.float32)))
    with pytest.raises(dcformat.EncodeError, match="duplicate"):
        writer.add("w", np.ones(2, np.float32))
    with pytest.raises(dcformat.EncodeError, match="EncodedTensor"):
        writer.add_encoded(np.zeros(3))  # type: ignore[arg-type]
    writer.commit()
    with pytest.raises(dcformat.EncodeError, match="closed"):
        writer.add_encoded(dcformat.encode("v", np.zeros(1, np.float32)))
    assert dcformat.load_file(tmp_path / "w.dcnn")["w"].tolist() == [0.0] * 4


def test_encode_rejects_what_the_format_cannot_hold() -> None:
    with pytest.raises(dcformat.EncodeError, match="names"):
        dcformat.encode("", np.zeros(1))
    with pytest.raises(dcformat.EncodeError, match="chunk_size"):
        dcformat.encode("w", np.zeros(1), chunk_size=0)
    with pytest.raises(dcformat.EncodeError, match="expected Raw"):
        dcformat.encode("w", [1.0, 2.0])  # type: ignore[arg-type]


def test_registry_covers_every_encoding_of_the_schema() -> None:
    declared = {value for name, value in pb.Encoding.items() if name != "ENCODING_UNSPECIFIED"}
    assert set(ENCODINGS) == declared
    for value, encoding in ENCODINGS.items():
        assert encoding.ENUM == value and encoding.NAME == pb.Encoding.Name(value)
    examples = tensors()
    chosen = {
        name: [e.NAME for e in ENCODINGS.values() if e.accepts(t)]
        for name, t in examples.items()
        if not isinstance(t, np.ndarray)
    }
    assert chosen == {"zstd": ["RAW"], "dense": ["DENSE_CODES"], "sparse": ["SPARSE_CODES"]}


def test_encoded_tensors_pickle_whole(tmp_path: Path) -> None:
    """EncodedTensor travels between processes (pickle) and writes the same file."""
    import pickle

    encoded = [dcformat.encode(name, t) for name, t in tensors().items()]
    copies = [pickle.loads(pickle.dumps(e)) for e in encoded]
    for original, copy in ((tmp_path / "a.dcnn", encoded), (tmp_path / "b.dcnn", copies)):
        with dcformat.Writer(original) as writer:
            for e in copy:
                writer.add_encoded(e)
    assert (tmp_path / "a.dcnn").read_bytes() == (tmp_path / "b.dcnn").read_bytes()
    record, payloads = encoded[2].to_bytes()
    with pytest.raises(dcformat.EncodeError, match="payloads"):
        dcformat.EncodedTensor.from_bytes(record, [*payloads, b"x"])
