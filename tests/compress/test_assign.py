"""The table-guided nearest-centroid assignment equals np.searchsorted on every input."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from converters.compress import assign as assign_module
from converters.compress.assign import MIN_VALUES, assign, assign_numpy, nearest_codes


def _check(boundaries: np.ndarray, values: np.ndarray, finite: bool = True) -> None:
    """Both paths (the C kernel when built, and numpy for finite values) equal np.searchsorted."""
    want = np.searchsorted(boundaries, values, side="right")
    if finite:
        np.testing.assert_array_equal(assign_numpy(boundaries, values), want)
    if finite or assign_module.native():
        np.testing.assert_array_equal(assign(boundaries, values), want)
    if assign_module._native is not None and values.dtype != np.float16:
        out = np.empty(values.size, np.int64)
        assign_module._native.codes(boundaries, values, values.itemsize, out, 8, False)
        np.testing.assert_array_equal(out, want)


def test_native_kernel_is_built() -> None:
    # The package build compiles it; set DCNN_NO_NATIVE=1 to run the suite on the numpy path alone.
    assert assign_module._native is not None or os.environ.get("DCNN_NO_NATIVE", "") not in ("", "0")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("k", [2, 3, 15, 255, 4095])
def test_equals_searchsorted_on_weights(dtype: type, k: int) -> None:
    rng = np.random.default_rng(k)
    values = (rng.standard_normal(MIN_VALUES * 4) * 0.05).astype(dtype)
    centroids = np.sort(rng.choice(values.astype(np.float64), k, replace=False))
    boundaries = (centroids[:-1] + centroids[1:]) / 2
    # values on the boundaries, beyond them, and between bunched boundaries
    values[: boundaries.size] = boundaries.astype(dtype)
    values[-3:] = [values.min() * 10, values.max() * 10, 0]
    _check(boundaries, values)


@given(
    st.lists(st.floats(-1e3, 1e3, width=32), min_size=2, max_size=40),
    st.integers(0, 2**32 - 1),
)
def test_equals_searchsorted_for_any_boundaries(points: list[float], seed: int) -> None:
    boundaries = np.sort(np.array(points, dtype=np.float64))  # ties and bunches included
    rng = np.random.default_rng(seed)
    values = np.concatenate(
        [
            rng.choice(boundaries, MIN_VALUES).astype(np.float32),  # exactly on a boundary (as float32)
            rng.uniform(boundaries[0] - 1, boundaries[-1] + 1, MIN_VALUES).astype(np.float32),
            np.nextafter(boundaries, np.inf).astype(np.float32),
        ]
    )
    _check(boundaries, values)


def test_overflowing_estimates_fall_back() -> None:
    boundaries = np.array([-1e300, 0.0, 1e300])
    values = np.linspace(-1e30, 1e30, MIN_VALUES * 2)
    _check(boundaries, values)
    _check(np.array([0.0, 1e-300]), np.full(MIN_VALUES, 5e-301))


@pytest.mark.skipif(assign_module._native is None, reason="the native kernel is not built")
def test_native_kernel_sorts_non_finite_values_as_numpy_does() -> None:
    values = np.tile(np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 2.0, 1e-30], np.float32), MIN_VALUES)
    for boundaries in ([-1.0, 0.0, 0.5, 2.0], [1.0], [1.0, 1.0, 1.0]):  # a table; none; no width
        _check(np.array(boundaries), values, finite=False)


@pytest.mark.parametrize("zero_symbol", [False, True])
@pytest.mark.parametrize(("k", "dtype"), [(16, np.uint8), (255, np.uint8), (1000, np.uint16)])
def test_nearest_codes_native_and_numpy_agree(monkeypatch, zero_symbol: bool, k: int, dtype: type) -> None:
    rng = np.random.default_rng(k)
    values = (rng.standard_normal(300_000) * 0.02).astype(np.float32)
    values[rng.random(values.size) < 0.3] = 0
    centroids = np.unique(rng.choice(values[values != 0].astype(np.float64), k - zero_symbol))
    boundaries = (centroids[:-1] + centroids[1:]) / 2
    want = np.searchsorted(boundaries, values, side="right") + zero_symbol
    if zero_symbol:
        want[values == 0] = 0
    for no_native in ("1", "0"):
        monkeypatch.setenv("DCNN_NO_NATIVE", no_native)
        codes = nearest_codes(boundaries, values, dtype, zero_symbol)
        assert codes.dtype == dtype
        np.testing.assert_array_equal(codes, want)


@pytest.mark.skipif(assign_module._native is None, reason="the native kernel is not built")
def test_native_kernel_rejects_codes_that_do_not_fit() -> None:
    values = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="do not fit"):
        assign_module._native.codes(np.arange(255.0), values, 4, np.zeros(4, np.uint8), 1, True)
    with pytest.raises(ValueError, match="one code per value"):
        assign_module._native.codes(np.arange(3.0), values, 4, np.zeros(3, np.uint8), 1, False)


def test_any_shape_on_both_paths(monkeypatch) -> None:
    rng = np.random.default_rng(7)
    boundaries = np.sort(rng.standard_normal(200)) * 0.01  # bunched: some weights need the fallback
    values = (rng.standard_normal((300, 400)) * 0.05).astype(np.float64)
    want = np.searchsorted(boundaries, values, side="right")
    for no_native in ("1", "0"):
        monkeypatch.setenv("DCNN_NO_NATIVE", no_native)
        got = assign(boundaries, values)
        assert got.shape == values.shape
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("stored_dtype", [np.float16, np.uint16])
@pytest.mark.parametrize("zero_symbol", [False, True])
def test_codes_of_16_bit_values_through_their_table(stored_dtype, zero_symbol: bool) -> None:
    from converters.compress.assign import stored_codes

    rng = np.random.default_rng(5)
    every = np.arange(1 << 16, dtype=np.uint16)  # every bit pattern once, then random weights
    if stored_dtype == np.float16:
        widened = every.view(np.float16).astype(np.float32)
    else:
        widened = (every.astype(np.uint32) << np.uint32(16)).view(np.float32)
    finite = every[np.isfinite(widened)]
    stored = np.concatenate([finite, rng.choice(finite, 50000)]).view(stored_dtype)
    values = widened[stored.view(np.uint16)]
    centroids = np.sort(rng.standard_normal(200) * 0.1)
    boundaries = (centroids[:-1] + centroids[1:]) / 2
    want = nearest_codes(boundaries, values, np.uint8, zero_symbol)
    np.testing.assert_array_equal(stored_codes(boundaries, stored, np.uint8, zero_symbol), want)
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        stored_codes(boundaries, values, np.uint8, zero_symbol)


@pytest.mark.parametrize("no_native", ["0", "1"])
def test_lookup_is_fancy_indexing(monkeypatch, no_native: str) -> None:
    from converters.compress.assign import lookup

    monkeypatch.setenv("DCNN_NO_NATIVE", no_native)
    rng = np.random.default_rng(6)
    for table_dtype, index_dtype in ((np.uint8, np.uint8), (np.uint16, np.uint16), (np.uint8, np.uint16)):
        table = rng.integers(0, np.iinfo(table_dtype).max, 1 << (8 * np.dtype(index_dtype).itemsize))
        table = table.astype(table_dtype)
        index = rng.integers(0, table.size, 70000).astype(index_dtype)
        np.testing.assert_array_equal(lookup(table, index), table[index])
