"""Write then read reproduces any tensor exactly, dense and sparse (property tests)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import dcformat
from dcformat import dtypes

RAW_DTYPES = [
    "float32",
    "float16",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
]
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=7)


def bitwise_equal(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return a.tobytes() == b.tobytes()


@given(st.data(), st.sampled_from(RAW_DTYPES), shapes, st.sampled_from([None, 1, 19]))
def test_raw_any_dtype(tmp_path_factory, data, dtype, shape, level):
    array = data.draw(hnp.arrays(np.dtype(dtype), shape))
    path = tmp_path_factory.mktemp("raw") / "t.dcnn"
    dcformat.save_file({"t": dcformat.Raw(array, zstd_level=level)}, path)
    assert bitwise_equal(dcformat.load_file(path)["t"], array)
    assert dcformat.validate(path).ok


@given(hnp.arrays(np.uint16, shapes))
def test_raw_bfloat16_bits_survive(tmp_path_factory, bits):
    path = tmp_path_factory.mktemp("bf16") / "t.dcnn"
    dcformat.save_file({"t": dcformat.Raw(bits, dtype="bfloat16")}, path)
    numpy_values = dcformat.load_file(path)["t"]  # numpy has no bfloat16: exact float32 values
    assert bitwise_equal(numpy_values, dtypes.bfloat16_to_float32(bits))


@given(hnp.arrays(np.uint16, shapes))
def test_raw_bfloat16_bits_survive_in_torch(tmp_path_factory, bits):
    torch = pytest.importorskip("torch")
    path = tmp_path_factory.mktemp("bf16") / "t.dcnn"
    dcformat.save_file({"t": dcformat.Raw(bits, dtype="bfloat16")}, path)
    with dcformat.safe_open(path, framework="torch") as f:
        tensor = f.get_tensor("t")
    assert str(tensor.dtype) == "torch.bfloat16"
    assert np.array_equal(tensor.view(torch.int16).numpy().view(np.uint16), bits)


@st.composite
def quantized(draw):
    k = draw(st.sampled_from([1, 2, 3, 16, 256, 4096, 65536]))
    book_dtype = draw(st.sampled_from([np.float32, np.float16]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    codebook = rng.normal(size=k).astype(book_dtype)
    shape = draw(shapes)
    numel = int(np.prod(shape))
    sparse = draw(st.booleans()) and k >= 1
    skew = draw(st.sampled_from([0.3, 1.0, 5.0]))
    out_dtype = draw(st.sampled_from(["float32", "float16", "bfloat16", "float64"]))
    if not sparse:
        codes = np.minimum((rng.pareto(skew, numel) * 2).astype(np.int64), k - 1)
        return dcformat.Quantized(codebook, codes.reshape(shape), shape, dtype=out_dtype)
    codebook[0] = 0
    keep = draw(st.sampled_from([0.0, 0.001, 0.1, 0.9, 1.0]))
    positions = np.flatnonzero(rng.random(numel) < keep)
    codes = 1 + np.minimum((rng.pareto(skew, positions.size)).astype(np.int64), max(k - 2, 0))
    codes = np.minimum(codes, k - 1)
    bits = draw(st.one_of(st.none(), st.integers(1, 16)))
    return dcformat.Quantized(codebook, codes, shape, positions=positions, index_bits=bits, dtype=out_dtype)


def expected_dense(q: dcformat.Quantized) -> np.ndarray:
    values = dtypes.convert_floats(q.codebook, q.dtype)
    if q.positions is None:
        out = values[q.codes]
    else:
        out = np.zeros(int(np.prod(q.shape)), dtype=values.dtype)
        out[q.positions] = values[q.codes]
    out = out.reshape(q.shape)
    return dtypes.bfloat16_to_float32(out) if q.dtype == "bfloat16" else out


@given(quantized(), st.integers(1, 5000))
def test_quantized_round_trip(tmp_path_factory, q, chunk_size):
    path = tmp_path_factory.mktemp("q") / "t.dcnn"
    try:
        dcformat.save_file({"t": q}, path, chunk_size=chunk_size)
    except dcformat.EncodeError as exc:  # only an explicit, too-narrow index width may refuse
        assert q.index_bits is not None and "too sparse" in str(exc)
        return
    expected = expected_dense(q)
    with dcformat.safe_open(path) as f:
        assert bitwise_equal(f.get_tensor("t"), expected)
        info = f.info("t")
        assert info.nonzeros == int(np.count_nonzero(expected))
        assert info.encoding == ("SPARSE_CODES" if q.positions is not None else "DENSE_CODES")
        sparse = f.get_sparse("t")
        assert np.array_equal(sparse.toarray().reshape(-1), expected.reshape(-1))
        codes = f.get_codes("t")
        assert np.array_equal(codes.codebook, q.codebook)
        if q.positions is not None:
            real = q.codes != 0
            assert np.array_equal(codes.positions, q.positions[real])
            assert np.array_equal(codes.codes, q.codes[real])
        else:
            assert np.array_equal(codes.codes, q.codes.reshape(q.shape))
    assert dcformat.validate(path).ok


def test_huge_gaps_force_fillers(tmp_path):
    book = np.array([0, 1.5, -2], np.float32)
    positions = np.array([0, 700, 9999])
    q = dcformat.Quantized(book, [1, 2, 1], (100, 100), positions=positions, index_bits=4)
    dcformat.save_file({"w": q}, tmp_path / "f.dcnn")
    with dcformat.safe_open(tmp_path / "f.dcnn") as f:
        info = f.info("w")
        assert info.index_bits == 4
        assert info.entries == 3 + 699 // 16 + (9999 - 700 - 1) // 16
        dense = f.get_tensor("w").reshape(-1)
    assert np.flatnonzero(dense).tolist() == positions.tolist()
    assert dense[positions].tolist() == [1.5, -2, 1.5]


def test_negative_zero_survives_sparse_codes(tmp_path):
    book = np.array([0, -0.0, 1], np.float32)
    q = dcformat.Quantized(book, [1, 2], (10,), positions=[3, 4])
    dcformat.save_file({"w": q}, tmp_path / "f.dcnn")
    dense = dcformat.load_file(tmp_path / "f.dcnn")["w"]
    assert np.signbit(dense[3]) and dense[4] == 1 and not np.signbit(dense[0])


def test_all_zero_sparse_tensor_uses_trailing_fillers(tmp_path):
    book = np.array([0, 1], np.float32)
    q = dcformat.Quantized(book, np.zeros(0, int), (1000, 1000), positions=np.zeros(0, int))
    dcformat.save_file({"w": q}, tmp_path / "f.dcnn")
    assert dcformat.validate(tmp_path / "f.dcnn").ok
    assert not dcformat.load_file(tmp_path / "f.dcnn")["w"].any()


def test_auto_index_bits_never_breaks_the_expansion_limit(tmp_path):
    book = np.array([0, 1], np.float32)
    q = dcformat.Quantized(book, [1], (4096, 4096), positions=[5])  # 16M elements, one entry
    dcformat.save_file({"w": q}, tmp_path / "f.dcnn")
    assert dcformat.validate(tmp_path / "f.dcnn").ok
    with dcformat.safe_open(tmp_path / "f.dcnn") as f:
        assert f.info("w").stored_bytes * 1024 + 65536 >= 4096 * 4096 * 4
