"""The one data-free path of a tensor: pruning, weight sharing, the smallest encoding."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import dcformat
from converters.compress import assign as assign_module
from converters.compress import fidelity
from converters.compress import share as share_module
from converters.compress.config import SAFE, apply_options
from converters.compress.tensor import CompressedTensor, compress_weight
from converters.errors import ConvertError
from converters.weight import Weight
from dcformat import dtypes
from dcformat.codec import huffman


@pytest.fixture
def rng() -> np.random.Generator:
    """Fresh random data for each test, whatever the order the tests run in."""
    return np.random.default_rng(0)


def run(array: np.ndarray, dtype: str, options=(), **kw) -> CompressedTensor:
    return compress_weight(Weight("layer.weight", array, dtype), apply_options(SAFE, options, **kw))


def written(
    tensor: CompressedTensor, tmp_path
) -> tuple[dcformat.TensorInfo, dcformat.Codes | None, np.ndarray]:
    """The tensor's header info, compressed form (None for RAW) and decoded values, from a file."""
    path = tmp_path / "t.dcnn"
    with dcformat.Writer(path) as writer:
        writer.add_encoded(tensor.encoded)
    with dcformat.safe_open(path) as f:
        info = f.info("layer.weight")
        codes = None if info.encoding == "RAW" else f.get_codes("layer.weight")
        return info, codes, f.get_tensor("layer.weight")


def test_dense_codes_with_at_most_2_to_the_bits_values_and_their_true_error(rng, tmp_path) -> None:
    array = rng.normal(size=(96, 128)).astype(np.float32)
    tensor = run(array, "float32", [("bits", "6")])
    info, codes, decoded = written(tensor, tmp_path)
    assert info.encoding == "DENSE_CODES" and info.dtype == "float32"
    assert codes.codebook.size <= 64 and tensor.report.weight_bits == 6
    assert tensor.error == pytest.approx(np.linalg.norm(array - decoded) / np.linalg.norm(array), rel=1e-6)
    assert 0 < tensor.error < 0.05 and tensor.report.error == tensor.error
    assert tensor.report.stored_bytes == tensor.encoded.stored_bytes


def test_pruned_tensor_is_stored_sparse_with_exact_zeros(rng, tmp_path) -> None:
    array = rng.normal(size=(128, 128)).astype(np.float32)
    tensor = run(array, "float32", [("prune", "0.9"), ("bits", "5")])
    info, codes, _ = written(tensor, tmp_path)
    assert info.encoding == "SPARSE_CODES" and tensor.report.encoding == "SPARSE_CODES"
    assert codes.codebook[0] == 0 and codes.positions.size == pytest.approx(0.1 * array.size, abs=1)
    flat = array.reshape(-1)
    assert np.abs(flat[codes.positions]).min() >= np.quantile(np.abs(array), 0.9) - 1e-6  # largest kept
    all_codes = np.zeros(array.size, np.uint8)
    all_codes[codes.positions] = codes.codes
    dense = dcformat.Quantized(codes.codebook, all_codes, array.shape)
    assert tensor.encoded.stored_bytes < dcformat.stored_size(dense)
    pruned_only = np.linalg.norm(np.delete(flat, codes.positions)) / np.linalg.norm(array)
    assert pruned_only < tensor.error < pruned_only + 0.02  # the reported error includes the pruning


def test_exact_storage_when_codes_would_cost_more(rng, tmp_path) -> None:
    # 64 values over 64 binades, a 256-entry codebook: packed, it costs what the data does
    array = (rng.normal(size=(8, 8)) * 2.0 ** np.arange(-32, 32).reshape(8, 8)).astype(np.float32)
    tensor = run(array, "float32", [("include", "layer*")], min_size=1)
    info, _, decoded = written(tensor, tmp_path)
    assert info.encoding == "RAW" and tensor.error == 0.0 and tensor.report.weight_bits is None
    assert np.array_equal(decoded, array)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_half_and_double_tensors_keep_their_dtype(dtype: str, rng, tmp_path) -> None:
    values = rng.normal(size=(64, 64)).astype(np.float32)
    tensor = run(dtypes.convert_floats(values, dtype), dtype, [("bits", "4")])
    info, _, _ = written(tensor, tmp_path)
    assert info.encoding == "DENSE_CODES" and info.dtype == dtype
    assert 0 < tensor.error < 0.2


def test_nan_weights_are_refused(rng) -> None:
    array = rng.normal(size=(64, 64)).astype(np.float32)
    array[3, 4] = np.nan
    with pytest.raises(ConvertError, match="NaN"):
        run(array, "float32")


def test_uncompressed_tensor_is_exact_and_zstd_packed(tmp_path) -> None:
    ids = np.arange(4096, dtype=np.int64).reshape(1, -1)
    tensor = run(ids, "int64")
    info, _, decoded = written(tensor, tmp_path)
    assert info.encoding == "RAW" and tensor.error == 0.0 and np.array_equal(decoded, ids)
    assert tensor.encoded.record.compression == dcformat.dcnn_pb2.COMPRESSION_ZSTD
    assert tensor.encoded.stored_bytes < ids.nbytes / 2


def test_a_source_already_encoded_keeps_its_cheapest_exact_encoding(rng, tmp_path) -> None:
    codebook = np.array([0.0, -0.5, 0.25, 1.0], np.float32)
    codes = rng.integers(0, 4, size=4096).astype(np.uint8)
    options = (dcformat.Raw(codebook[codes]), dcformat.Quantized(codebook, codes, (4096,)))
    tensor = compress_weight(Weight("layer.weight", codebook[codes], "float32", encodings=options), SAFE)
    info, _, decoded = written(tensor, tmp_path)
    assert info.encoding == "DENSE_CODES" and np.array_equal(decoded, codebook[codes])


def test_large_tensors_take_the_nearest_of_centroids_fitted_on_a_sample(monkeypatch, rng, tmp_path) -> None:
    monkeypatch.setattr(share_module, "KMEANS_SAMPLE", 16384)
    monkeypatch.setattr(share_module, "BLOCK", 1000)
    array = rng.laplace(size=(250, 200)).astype(np.float32)
    array.reshape(-1)[rng.choice(array.size, 37, replace=False)] = 0.0
    tensor = run(array, "float32", [("bits", "5")])
    _, stored, decoded = written(tensor, tmp_path)
    codebook, flat = stored.codebook, array.reshape(-1)
    assert codebook[0] == 0 and np.array_equal(decoded.reshape(-1) == 0, flat == 0)  # the zero symbol
    distance = np.abs(flat[:, None] - codebook[None, 1:].astype(np.float64)).min(axis=1)
    chosen = np.abs(flat - decoded.reshape(-1).astype(np.float64))
    assert np.all(chosen[flat != 0] <= distance[flat != 0] + 1e-6)
    monkeypatch.setattr(share_module, "KMEANS_SAMPLE", array.size)  # all weights: exact k-means
    full = run(array, "float32", [("bits", "5")])
    assert abs(tensor.error - full.error) < 0.05 * full.error  # either may find the better local optimum


def test_memory_is_a_few_bytes_per_weight(monkeypatch, rng) -> None:
    """Compressing and encoding a large tensor allocates a sorted copy, one-byte codes and the
    coded bytes, not the float64 work arrays of a full k-means or int64 codes."""
    # samples and blocks small against the tensor, so that only per-weight costs count
    monkeypatch.setattr(share_module, "KMEANS_SAMPLE", 1 << 16)
    monkeypatch.setattr(fidelity, "BLOCK_VALUES", 1 << 16)
    monkeypatch.setattr(share_module, "BLOCK", 1 << 16)
    monkeypatch.setattr(assign_module, "BLOCK", 1 << 16)  # the numpy path's int64 codes
    monkeypatch.setattr(huffman, "_BLOCK", 1 << 16)
    array = rng.standard_normal(1 << 22, dtype=np.float32).reshape(1024, 4096)
    tracemalloc.start()
    try:
        compress_weight(Weight("big.weight", array, "float32"), SAFE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 6 * array.size  # the sorted copy alone takes 4


def test_row_scales_serve_rows_of_very_different_ranges(rng, tmp_path) -> None:
    from dataclasses import replace

    from converters.compress.tensor import compress_planned, plan_for

    array = (rng.standard_normal((64, 256)) * np.geomspace(0.01, 1, 64)[:, None]).astype(np.float32)
    weight = Weight("layer.weight", array, "float32")
    plan = replace(plan_for(SAFE, weight), bits=4, snr=None)
    plain, scaled = (compress_planned(weight, plan, SAFE, scaled=s) for s in (False, True))
    assert scaled.encoded.record.encoding == dcformat.dcnn_pb2.DENSE_CODES_EXT and scaled.scales is not None
    assert scaled.error < 0.8 * plain.error
    _, _, decoded = written(scaled, tmp_path)
    assert np.array_equal(decoded, scaled.values(weight))  # the reader decodes what was measured
    assert scaled.error == pytest.approx(np.linalg.norm(decoded - array) / np.linalg.norm(array), rel=1e-6)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("options", [(), [("bits", "4")]])
def test_native_kernels_write_numpys_bytes(monkeypatch, rng, dtype: str, options) -> None:
    # C kernels (assignment, tables of 16-bit values, Lloyd, error sums, packing) against the
    # numpy code: the same bytes and the same error, bit for bit. A small KMEANS_SAMPLE sends
    # the tensor through the sampled path and its code table; zeros give a zero symbol.
    monkeypatch.setattr(share_module, "KMEANS_SAMPLE", 1 << 14)
    monkeypatch.setattr(share_module, "BLOCK", 3000)  # error sums over several blocks
    values = (rng.standard_normal((96, 512)) * 0.02).astype(np.float32)
    values.reshape(-1)[rng.choice(values.size, 500, replace=False)] = 0.0
    array = dtypes.convert_floats(values, dtype)
    results = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("DCNN_NO_NATIVE", flag)
        results[flag] = run(array, dtype, options)
    numpy_tensor, native_tensor = results["1"], results["0"]
    assert numpy_tensor.codes is not None  # coded, not stored exactly
    assert numpy_tensor.encoded.to_bytes() == native_tensor.encoded.to_bytes()
    assert numpy_tensor.error == native_tensor.error


@pytest.mark.parametrize(("dtype", "scaled"), [(np.float32, False), (np.float32, True), (np.float64, False)])
@pytest.mark.parametrize("size", [5, 8, 129, 3000, 70001])
def test_native_error_sums_are_numpys(monkeypatch, rng, dtype, scaled: bool, size: int) -> None:
    from converters.compress import tensor as tensor_module

    if tensor_module._kernels is None:
        pytest.skip("the native kernels are not built")
    monkeypatch.setattr(share_module, "BLOCK", 4096)
    values = (rng.standard_normal(size) * 0.02).astype(dtype)
    codebook = np.sort(rng.standard_normal(300) * 0.02).astype(dtype)
    codes = rng.integers(0, 300, size).astype(np.uint16)
    scales = (rng.random(size // 5 if size % 5 == 0 else 1) + 0.5).astype(np.float32) if scaled else None
    monkeypatch.setenv("DCNN_NO_NATIVE", "1")
    want = tensor_module._relative_rms(values, codebook, codes, scales)
    monkeypatch.setenv("DCNN_NO_NATIVE", "0")
    assert tensor_module._native_sums(values, codebook, codes, scales) is not None
    assert tensor_module._relative_rms(values, codebook, codes, scales) == want


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_counting_sort_of_16_bit_values_is_nps(monkeypatch, rng, dtype: str) -> None:
    from converters.compress import tensor as tensor_module

    values = (rng.laplace(size=(300, 400)) * 0.02).astype(np.float32)
    values.reshape(-1)[:700] = 0.0
    values.reshape(-1)[700:900] = -0.0
    array = dtypes.convert_floats(values, dtype)
    weight = Weight("layer.weight", array, dtype)
    flat = weight.values().reshape(-1)
    got, want = tensor_module.sorted_values(weight, flat), np.sort(flat)
    assert got.dtype == want.dtype and np.array_equal(got, want)  # -0.0 == 0.0
    nonzero = want != 0
    assert got[nonzero].tobytes() == want[nonzero].tobytes()
    # and the files: the chooser and fixed bits write np.sort's bytes
    monkeypatch.setattr(share_module, "KMEANS_SAMPLE", 1 << 14)
    for options in ((), [("bits", "4")]):
        counted = run(array, dtype, options)
        monkeypatch.setattr(tensor_module, "sorted_values", lambda weight, values: np.sort(values))
        sorted_ = run(array, dtype, options)
        monkeypatch.undo()
        monkeypatch.setattr(share_module, "KMEANS_SAMPLE", 1 << 14)
        assert counted.encoded.to_bytes() == sorted_.encoded.to_bytes()


def test_huge_page_requests_are_restored_after_a_tensor(rng) -> None:
    from converters.compress import tensor as tensor_module

    toggle = tensor_module._set_madvise_hugepage
    if toggle is None:
        pytest.skip("this numpy has no huge-page switch")
    seen = []
    was = toggle(True)
    try:
        with tensor_module.small_pages():
            seen.append(toggle(False))  # off inside
        run(rng.standard_normal((64, 64)).astype(np.float32), "float32")
        seen.append(toggle(True))  # on again after a tensor
    finally:
        toggle(was)
    assert seen == [False, True]
