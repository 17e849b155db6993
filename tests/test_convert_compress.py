"""Data-free compression of one tensor: pruning, weight sharing, the smallest encoding."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from converters import compress as compress_module
from converters.compress import compress, plan_for
from converters.errors import ConvertError
from converters.model_io import Weight
from converters.settings import SAFE, apply_options
from dcformat import Quantized, Raw, dtypes, stored_size
from dcformat import encode as encode_tensor
from dcformat.codec import huffman


@pytest.fixture
def rng() -> np.random.Generator:
    """Fresh random data for each test, whatever the order the tests run in."""
    return np.random.default_rng(0)


def run(array: np.ndarray, dtype: str, options=(), **kw) -> tuple[Raw | Quantized, float]:
    config = apply_options(SAFE, options, **kw)
    w = Weight("layer.weight", array, dtype)
    return compress(w, plan_for(config, w), config)


def test_dense_codes_with_at_most_2_to_the_bits_values_and_their_true_error(rng: np.random.Generator) -> None:
    array = rng.normal(size=(96, 128)).astype(np.float32)
    tensor, error = run(array, "float32", [("bits", "6")])
    assert isinstance(tensor, Quantized) and not tensor.sparse and tensor.dtype == "float32"
    assert tensor.codebook.size <= 64
    decoded = tensor.codebook[tensor.codes].reshape(array.shape)
    assert error == pytest.approx(np.linalg.norm(array - decoded) / np.linalg.norm(array), rel=1e-6)
    assert 0 < error < 0.05


def test_pruned_tensor_is_stored_sparse_with_exact_zeros(rng: np.random.Generator) -> None:
    array = rng.normal(size=(128, 128)).astype(np.float32)
    tensor, error = run(array, "float32", [("prune", "0.9"), ("bits", "5")])
    assert isinstance(tensor, Quantized) and tensor.sparse
    assert tensor.codebook[0] == 0 and tensor.positions.size == pytest.approx(0.1 * array.size, abs=1)
    flat = array.reshape(-1)
    assert np.abs(flat[tensor.positions]).min() >= np.quantile(np.abs(array), 0.9) - 1e-6  # largest kept
    codes = np.zeros(array.size, np.int64)
    codes[tensor.positions] = tensor.codes
    assert stored_size(tensor) < stored_size(Quantized(tensor.codebook, codes, array.shape))
    pruned_only = np.linalg.norm(np.delete(flat, tensor.positions)) / np.linalg.norm(array)
    assert pruned_only < error < pruned_only + 0.02  # the reported error includes the pruning


def test_exact_storage_when_codes_would_cost_more(rng: np.random.Generator) -> None:
    array = rng.normal(size=(8, 8)).astype(np.float32)  # 64 values, a 256-entry codebook
    tensor, error = run(array, "float32", [("include", "layer*")], min_size=1)
    assert isinstance(tensor, Raw) and error == 0.0
    assert np.array_equal(tensor.array, array)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_half_and_double_tensors_keep_their_dtype(dtype: str, rng: np.random.Generator) -> None:
    values = rng.normal(size=(64, 64)).astype(np.float32)
    array = dtypes.convert_floats(values, dtype)
    tensor, error = run(array, dtype, [("bits", "4")])
    assert isinstance(tensor, Quantized) and tensor.dtype == dtype
    assert 0 < error < 0.2


def test_nan_weights_are_refused(rng: np.random.Generator) -> None:
    array = rng.normal(size=(64, 64)).astype(np.float32)
    array[3, 4] = np.nan
    with pytest.raises(ConvertError, match="NaN"):
        run(array, "float32")


def test_uncompressed_tensor_is_exact_and_zstd_packed() -> None:
    ids = np.arange(4096, dtype=np.int64).reshape(1, -1)
    tensor, error = run(ids, "int64")
    assert isinstance(tensor, Raw) and tensor.zstd_level is not None and error == 0.0
    assert stored_size(tensor) < ids.nbytes / 2


def test_large_tensors_take_the_nearest_of_centroids_fitted_on_a_sample(
    monkeypatch, rng: np.random.Generator
) -> None:
    monkeypatch.setattr(compress_module, "KMEANS_SAMPLE", 16384)
    monkeypatch.setattr(compress_module, "BLOCK", 1000)
    array = rng.laplace(size=(250, 200)).astype(np.float32)
    array.reshape(-1)[rng.choice(array.size, 37, replace=False)] = 0.0
    tensor, error = run(array, "float32", [("bits", "5")])
    assert isinstance(tensor, Quantized) and tensor.codes.dtype == np.uint8
    codebook, codes, flat = tensor.codebook, tensor.codes, array.reshape(-1)
    assert codebook[0] == 0 and np.array_equal(codes == 0, flat == 0)  # the zero symbol
    distance = np.abs(flat[:, None] - codebook[None, 1:].astype(np.float64))
    chosen = np.abs(flat - codebook[codes].astype(np.float64))
    assert np.all(chosen[flat != 0] <= distance[flat != 0].min(axis=1) + 1e-6)
    assert np.all(codes[flat != 0] > 0)
    monkeypatch.setattr(compress_module, "KMEANS_SAMPLE", array.size)  # all weights: exact k-means
    _, full_error = run(array, "float32", [("bits", "5")])
    assert abs(error - full_error) < 0.05 * full_error  # either may find the better local optimum


def test_memory_is_a_few_bytes_per_weight(monkeypatch, rng: np.random.Generator) -> None:
    """Compressing and encoding a large tensor allocates a sorted copy, one-byte codes and the
    coded bytes, not the float64 work arrays of a full k-means or int64 codes."""
    # samples and blocks small against the tensor, so that only per-weight costs count
    monkeypatch.setattr(compress_module, "KMEANS_SAMPLE", 1 << 16)
    monkeypatch.setattr(compress_module, "BLOCK", 1 << 16)
    monkeypatch.setattr(huffman, "_BLOCK", 1 << 16)
    array = rng.standard_normal(1 << 22, dtype=np.float32).reshape(1024, 4096)
    w = Weight("big.weight", array, "float32")
    tracemalloc.start()
    try:
        tensor, _ = compress_module.compress(w, plan_for(SAFE, w), SAFE)
        encode_tensor("big.weight", tensor)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 6 * array.size  # the sorted copy alone takes 4
