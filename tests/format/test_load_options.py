"""Reader options: output dtype, torch device, threads; lazy decoding; memory while decoding."""

from __future__ import annotations

import tracemalloc
import zlib

import numpy as np
import pytest

import dcformat
from dcformat import dtypes
from dcformat.codec import decode as codec
from dcformat.layout import PREAMBLE, PREAMBLE_SIZE, align_up

PATHS = ["numpy", "native"] if codec.enabled() else ["numpy"]


@pytest.fixture
def decoder(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    monkeypatch.setenv("DCNN_NO_NATIVE", "1" if request.param == "numpy" else "0")
    return request.param


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "decoder" in metafunc.fixturenames:
        metafunc.parametrize("decoder", PATHS, indirect=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    """A file with dense-coded, sparse-coded, bfloat16-coded, RAW float and RAW int tensors."""
    rng = np.random.default_rng(0)
    book = np.concatenate(([0.0], rng.normal(scale=3.0, size=31))).astype(np.float32)
    dense_codes = rng.integers(0, 32, size=(70, 90))
    positions = np.sort(rng.choice(70 * 90, size=700, replace=False))
    sparse_codes = rng.integers(1, 32, size=700)
    raw = rng.normal(size=(5, 7)).astype(np.float32)
    tensors = {
        "dense": dcformat.Quantized(book, dense_codes, (70, 90)),
        "sparse": dcformat.Quantized(book, sparse_codes, (70, 90), positions=positions),
        "bf16": dcformat.Quantized(book, dense_codes[:3], (3, 90), dtype="bfloat16"),
        "raw": raw,
        "ids": np.arange(12, dtype=np.int64).reshape(3, 4),
    }
    path = tmp_path_factory.mktemp("opts") / "m.dcnn"
    dcformat.save_file(tensors, path, chunk_size=128)
    sparse = np.zeros(70 * 90, np.float32)
    sparse[positions] = book[sparse_codes]
    bf16 = dtypes.bfloat16_to_float32(dtypes.bfloat16_bits(book[dense_codes[:3]]))
    expect = {
        "dense": book[dense_codes],
        "sparse": sparse.reshape(70, 90),
        "bf16": bf16,
        "raw": raw,
        "ids": tensors["ids"],
    }
    return path, expect


FLOATS = ["dense", "sparse", "bf16", "raw"]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
def test_output_dtype_numpy(model, decoder: str, dtype: str) -> None:
    path, expect = model
    with dcformat.safe_open(path) as f:
        for name in FLOATS:
            got = f.get_tensor(name, dtype=dtype)
            want = expect[name]
            if dtype == "bfloat16":  # numpy has no bfloat16: the values come widened to float32
                want = dtypes.bfloat16_to_float32(dtypes.bfloat16_bits(want.astype(np.float32)))
            else:
                want = want.astype(dtype)
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
def test_output_dtype_torch(model, decoder: str, dtype: str) -> None:
    torch = pytest.importorskip("torch")
    path, expect = model
    torch_dtype = getattr(torch, dtype)
    loaded = dcformat.load_file(path, framework="torch", dtype=dtype, device="cpu")
    with dcformat.safe_open(path, framework="torch") as f:
        assert f.get_tensor("ids", device="cpu").dtype == torch.int64
        for name in FLOATS:
            want = torch.from_numpy(expect[name]).to(torch_dtype)  # torch rounds to nearest even too
            for got in (f.get_tensor(name, dtype=dtype, device="cpu"), loaded[name]):
                assert got.dtype == torch_dtype and got.device.type == "cpu"
                assert torch.equal(got, want)


def test_stored_bfloat16_comes_as_torch_bfloat16(model, decoder: str) -> None:
    torch = pytest.importorskip("torch")
    path, expect = model
    with dcformat.safe_open(path, framework="torch") as f:
        got = f.get_tensor("bf16")
    assert got.dtype == torch.bfloat16
    assert torch.equal(got.float(), torch.from_numpy(expect["bf16"]))


def test_bad_dtype_and_device(model) -> None:
    path, _ = model
    with dcformat.safe_open(path) as f:
        with pytest.raises(dcformat.DcnnError) as info:
            f.get_tensor("ids", dtype="float32")  # dtype= converts float tensors only
        assert info.value.rule == "usage"
        for bad in ("int8", "float8", "half"):
            with pytest.raises(dcformat.DcnnError):
                f.get_tensor("dense", dtype=bad)
        with pytest.raises(dcformat.DcnnError, match="framework='torch'"):
            f.get_tensor("dense", device="cpu")
    with pytest.raises(dcformat.DcnnError) as info:
        dcformat.load_file(path, dtype="int32")
    assert info.value.rule == "usage"


def test_bad_torch_device(model) -> None:
    torch = pytest.importorskip("torch")
    path, _ = model
    with dcformat.safe_open(path, framework="torch") as f:
        for device in ("nope", "cuda:0" if not torch.cuda.is_available() else "nope:1"):
            with pytest.raises(dcformat.DcnnError) as info:
                f.get_tensor("dense", device=device)
            assert info.value.rule == "usage" and info.value.tensor == "dense"


def test_threads_give_the_same_tensors(model, decoder: str) -> None:
    path, expect = model
    for threads in (1, 2, 7):
        got = dcformat.load_file(path, threads=threads)
        with dcformat.safe_open(path, threads=threads) as f:
            assert f.threads == threads
            single = {name: f.get_tensor(name) for name in f.keys()}
        for name, want in expect.items():
            np.testing.assert_array_equal(got[name], want)
            np.testing.assert_array_equal(single[name], want)


def test_threads_raise_the_error_of_one_thread(model, decoder: str, tmp_path) -> None:
    """Two corrupt tensors: tensors decoded side by side still raise the first one's error."""
    path, _ = model
    data = bytearray(path.read_bytes())
    with dcformat.safe_open(path) as f:
        start = f.preamble.data_start
        for section in (f._record("sparse").codes.data, f._record("raw").raw):
            data[start + section.offset + section.length // 2] ^= 0x10
    bad = tmp_path / "bad.dcnn"
    bad.write_bytes(bytes(data))
    errors = []
    for threads in (1, 2, 7):
        with pytest.raises(dcformat.DcnnError) as info:
            dcformat.load_file(bad, threads=threads)
        errors.append((type(info.value), info.value.rule, info.value.tensor, str(info.value)))
    assert errors[0][2] == "sparse"
    assert errors[1] == errors[0] and errors[2] == errors[0]


def test_decode_error_is_not_masked_by_the_streams_view_of_the_map(tmp_path, decoder: str) -> None:
    """Streams are decoded from views of the map; the error's frames still hold one when the file
    closes, and the error raised is the format's, not the map's BufferError."""
    rng = np.random.default_rng(0)
    book = rng.standard_normal(32).astype(np.float32)
    codes = np.minimum(rng.geometric(0.3, (300, 300)) - 1, 31)  # unequal code lengths
    path = tmp_path / "w.dcnn"
    dcformat.save_file({"w": dcformat.Quantized(book, codes, (300, 300))}, path, chunk_size=256)
    data = bytearray(path.read_bytes())
    with dcformat.safe_open(path) as f:
        start = f.preamble.data_start + f._record("w").codes.data.offset
        stream = f.stream(f._record("w").codes)
    assert stream.data.size and not stream.data.flags.writeable  # a view, outliving close()
    for i in range(20):
        data[start + 100 + i] ^= 0xFF
    path.write_bytes(bytes(data))
    for threads in (1, 2):
        with pytest.raises(dcformat.FormatError) as info:
            dcformat.load_file(path, verify=False, threads=threads)
        assert info.value.rule == "huffman-data"


@pytest.mark.parametrize("threads", [0, -2, 1.5, "2", True, None])
def test_bad_threads(model, threads) -> None:
    path, _ = model
    for opener in (dcformat.safe_open, dcformat.load_file):
        with pytest.raises(dcformat.DcnnError) as info:
            opener(path, threads=threads)
        assert info.value.rule == "usage"


def break_tensor(path, tensor_name: str, how: str) -> None:
    """Corrupt one tensor: flip a bit of its first section ("crc"), or make its header
    declare one nonzero more than it has ("nonzeros", every checksum kept valid)."""
    raw = bytearray(open(path, "rb").read())
    _, _, minor, header_length, _, _ = PREAMBLE.unpack(raw[:PREAMBLE_SIZE])
    header = dcformat.dcnn_pb2.Header.FromString(bytes(raw[PREAMBLE_SIZE : PREAMBLE_SIZE + header_length]))
    data = raw[align_up(PREAMBLE_SIZE + header_length) :]
    header = dcformat.file.header.inflate_header(header, minor)  # written plain below
    tensor = next(t for t in header.tensors if t.name == tensor_name)
    if how == "crc":
        section = next(dcformat.file.header.sections_of(tensor))
        data[section.offset + section.length // 2] ^= 0x10
    else:
        tensor.nonzeros += 1
    blob = header.SerializeToString()
    head = PREAMBLE.pack(b"\x89DCN\r\n\x1a\n", 1, minor, len(blob), zlib.crc32(blob), 0)
    head = head[:-4] + zlib.crc32(head[:-4]).to_bytes(4, "little") + blob
    with open(path, "wb") as f:
        f.write(head + bytes(align_up(len(head)) - len(head)) + data)


@pytest.mark.parametrize(("how", "rule"), [("crc", "section-crc"), ("nonzeros", "nonzeros")])
def test_only_the_tensors_asked_for_are_decoded(tmp_path, model, decoder: str, how: str, rule: str) -> None:
    path, expect = model
    broken = tmp_path / "broken.dcnn"
    broken.write_bytes(path.read_bytes())
    break_tensor(broken, "dense", how)
    with dcformat.safe_open(broken) as f:  # opening decodes nothing
        assert f.keys() == list(expect)
        assert f.info("dense").shape == (70, 90)
        for name in ("sparse", "bf16", "raw", "ids"):
            np.testing.assert_array_equal(f.get_tensor(name), expect[name])
        with pytest.raises(dcformat.FormatError) as info:
            f.get_tensor("dense")
    assert (info.value.tensor, info.value.rule) == ("dense", rule)
    with pytest.raises(dcformat.FormatError):
        dcformat.load_file(broken)


@pytest.mark.parametrize(
    ("encoding", "dtype", "limit"),
    [("dense", None, 2.0), ("sparse", None, 2.0), ("dense", "float16", 2.75), ("sparse", "float16", 2.75)],
)
def test_peak_memory_is_about_the_dense_size(
    tmp_path, decoder: str, encoding: str, dtype, limit: float
) -> None:
    # The output, plus 2 bytes per decoded symbol and the compressed stream: about one float32
    # dense size more (half-size outputs still carry the 2-byte symbols, hence the looser limit).
    rng = np.random.default_rng(5)
    numel = 1 << 20
    book = np.concatenate(([0.0], rng.normal(size=31))).astype(np.float32)
    if encoding == "dense":
        tensor = dcformat.Quantized(book, rng.integers(0, 32, numel), (numel,))
    else:  # 30% dense: the stored entries' own arrays are part of the peak
        positions = np.sort(rng.choice(numel, numel * 3 // 10, replace=False))
        tensor = dcformat.Quantized(book, rng.integers(1, 32, positions.size), (numel,), positions=positions)
    dcformat.save_file({"w": tensor}, tmp_path / "w.dcnn")
    with dcformat.safe_open(tmp_path / "w.dcnn", threads=2) as f:
        tracemalloc.start()
        try:
            out = f.get_tensor("w", dtype=dtype)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert out.nbytes == numel * (2 if dtype else 4)
    assert peak <= limit * out.nbytes, f"peak {peak / out.nbytes:.2f}x the dense size"
