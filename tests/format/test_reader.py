"""The reader's API: safe_open, info, dtype conversion, sparse shapes, frameworks, errors."""

import numpy as np
import pytest

import dcformat
from dcformat.file import reader


@pytest.fixture()
def model(tmp_path):
    book = np.array([0, 0.5, -1.25, 3], np.float32)
    rng = np.random.default_rng(0)
    conv_codes = rng.integers(0, 4, (4, 3, 2, 2))
    positions = np.array([1, 7, 30, 47])
    tensors = {
        "conv.weight": dcformat.Quantized(book, conv_codes, (4, 3, 2, 2)),
        "fc.weight": dcformat.Quantized(book, [1, 2, 3, 1], (6, 8), positions=positions),
        "fc.bias": np.array([0.1, 0, -0.2], np.float32),
        "steps": np.array(7, np.int64),
    }
    path = tmp_path / "m.dcnn"
    dcformat.save_file(tensors, path, metadata={"arch": "tiny"}, source=dcformat.Source("pytorch"))
    dense_fc = np.zeros(48, np.float32)
    dense_fc[positions] = book[[1, 2, 3, 1]]
    return path, {"conv.weight": book[conv_codes], "fc.weight": dense_fc.reshape(6, 8)}


def test_keys_metadata_source_version(model):
    path, _ = model
    with dcformat.safe_open(path) as f:
        assert f.keys() == ["conv.weight", "fc.weight", "fc.bias", "steps"]
        assert f.metadata() == {"arch": "tiny"}
        assert f.source().format == "pytorch"
        assert f.version == (1, 2)  # the default writer's unpadded sections are a 1.2 feature
        assert f.producer.startswith("dcnn")


def test_info_fields(model):
    path, _ = model
    with dcformat.safe_open(path) as f:
        fc = f.info("fc.weight")
        assert (fc.shape, fc.dtype, fc.encoding) == ((6, 8), "float32", "SPARSE_CODES")
        assert fc.entries >= 4  # a tiny tensor may prefer narrow gaps plus fillers
        assert (fc.nonzeros, fc.weight_bits) == (4, 2)
        assert 1 <= fc.index_bits <= 16 and fc.stored_bytes > 0
        assert fc.dense_bytes == 48 * 4
        assert f.info("conv.weight").encoding == "DENSE_CODES"
        bias = f.info("fc.bias")
        assert (bias.encoding, bias.nonzeros, bias.weight_bits) == ("RAW", 2, 32)


def test_output_dtypes(model):
    path, expected = model
    with dcformat.safe_open(path) as f:
        assert f.get_tensor("conv.weight", dtype="float16").dtype == np.float16
        assert np.array_equal(
            f.get_tensor("conv.weight", dtype="float16"), expected["conv.weight"].astype(np.float16)
        )
        bf = f.get_tensor("conv.weight", dtype="bfloat16")  # numpy: exact float32 of the bf16 values
        assert np.array_equal(bf, expected["conv.weight"])
        with pytest.raises(dcformat.DcnnError, match="cannot convert"):
            f.get_tensor("steps", dtype="float16")


def test_output_dtypes_torch(model):
    torch = pytest.importorskip("torch")
    path, expected = model
    with dcformat.safe_open(path, framework="torch") as f:
        t = f.get_tensor("fc.weight", dtype="bfloat16")
        assert t.dtype == torch.bfloat16
        assert torch.equal(t.float(), torch.from_numpy(expected["fc.weight"]))
        assert f.get_tensor("steps").dtype == torch.int64


def test_sparse_layouts_and_ranks(model):
    pytest.importorskip("scipy")
    path, expected = model
    with dcformat.safe_open(path) as f:
        csr = f.get_sparse("conv.weight")
        assert csr.shape == (4, 12)
        assert np.array_equal(csr.toarray(), expected["conv.weight"].reshape(4, 12))
        coo = f.get_sparse("fc.weight", layout="coo")
        assert coo.nnz == 4 and np.array_equal(coo.toarray(), expected["fc.weight"])
        assert f.get_sparse("fc.bias").shape == (1, 3)
        assert f.get_sparse("steps").shape == (1, 1)


def test_sparse_torch(model):
    torch = pytest.importorskip("torch")
    path, expected = model
    with dcformat.safe_open(path, framework="torch") as f:
        csr = f.get_sparse("fc.weight")
        assert csr.layout == torch.sparse_csr
        assert torch.equal(csr.to_dense(), torch.from_numpy(expected["fc.weight"]))


def test_get_codes(model):
    path, _ = model
    with dcformat.safe_open(path) as f:
        codes = f.get_codes("fc.weight")
        assert codes.positions.tolist() == [1, 7, 30, 47]
        assert codes.codes.tolist() == [1, 2, 3, 1]
        assert f.get_codes("conv.weight").codes.shape == (4, 3, 2, 2)
        with pytest.raises(dcformat.DcnnError, match="no codes"):
            f.get_codes("fc.bias")


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda tmp: dcformat.safe_open(tmp / "missing.dcnn"), dcformat.DcnnIOError),
        (lambda tmp: dcformat.safe_open(tmp), dcformat.DcnnIOError),
        (lambda tmp: dcformat.safe_open(42), dcformat.DcnnError),
        (lambda tmp: dcformat.safe_open(tmp / "m.dcnn", framework="jax"), dcformat.DcnnError),
    ],
)
def test_bad_arguments(tmp_path, call, error):
    dcformat.save_file({"a": np.ones(1)}, tmp_path / "m.dcnn")
    with pytest.raises(error):
        call(tmp_path)


def test_unknown_name_and_closed_file(model):
    path, _ = model
    f = dcformat.safe_open(path)
    with pytest.raises(dcformat.DcnnError, match="no tensor named"):
        f.get_tensor("nope")
    f.close()
    with pytest.raises(dcformat.DcnnError, match="closed"):
        f.get_tensor("fc.bias")


def test_empty_file_is_rejected(tmp_path):
    (tmp_path / "e.dcnn").write_bytes(b"")
    with pytest.raises(dcformat.FormatError) as info:
        dcformat.safe_open(tmp_path / "e.dcnn")
    assert info.value.rule == "truncated"


def test_newer_minor_version_is_accepted_and_unknown_fields_ignored(tmp_path):
    from dcformat import dcnn_pb2 as pb
    from dcformat.layout import MAGIC, PREAMBLE, align_up

    header = pb.Header(producer="future")
    header.tensors.add(name="x", shape=[0], dtype=pb.FLOAT32, encoding=pb.RAW)
    raw = header.SerializeToString() + b"\xa2\x06\x03abc"  # unknown field 100 (length-delimited)
    import zlib

    head = PREAMBLE.pack(MAGIC, 1, 7, len(raw), zlib.crc32(raw), 0)
    head = head[:-4] + zlib.crc32(head[:-4]).to_bytes(4, "little") + raw
    (tmp_path / "f.dcnn").write_bytes(head + bytes(align_up(len(head)) - len(head)))
    with dcformat.safe_open(tmp_path / "f.dcnn") as f:
        assert f.version == (1, 7)
        assert f.get_tensor("x").shape == (0,)


def test_the_reused_zstd_decompressor_recovers_after_bad_frames():
    """Each thread keeps one zstd decompressor: a broken or cut frame leaves nothing behind."""
    import zstandard

    from dcformat.encodings import raw

    good = np.arange(1000, dtype=np.float32).tobytes()
    frame = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(good)
    for bad in (frame[: len(frame) // 2], frame[:6] + bytes(len(frame) - 6)):
        with pytest.raises(dcformat.FormatError):
            raw._unzstd(np.frombuffer(bad, np.uint8), len(good))
        assert raw._unzstd(np.frombuffer(frame, np.uint8), len(good)) == good


def test_mapped_pages_are_dropped_by_one_thread_only(model, monkeypatch):
    """One thread gives back each section's mapped pages once read; several threads keep them
    (each drop would be a TLB shootdown on the other threads' CPUs)."""
    path, expected = model
    dropped = []
    monkeypatch.setattr(reader, "_drop_pages", lambda buffer, start, stop: dropped.append((start, stop)))
    for threads in (1, 2):
        dropped.clear()
        tensors = dcformat.load_file(path, threads=threads)
        assert all(np.array_equal(tensors[name], value) for name, value in expected.items())
        assert bool(dropped) == (threads == 1)
