"""The table-guided nearest-centroid assignment equals np.searchsorted on every input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from converters.compress.assign import MIN_VALUES, assign


def _check(boundaries: np.ndarray, values: np.ndarray) -> None:
    want = np.searchsorted(boundaries, values, side="right")
    np.testing.assert_array_equal(assign(boundaries, values), want)


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
