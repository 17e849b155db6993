"""Relative indices with padding-zero fillers."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from dcformat.codec import gaps


def test_spec_worked_example():
    entry_gaps, entry_codes = gaps.with_fillers(np.array([2, 5, 40]), np.array([1, 2, 3]), 3)
    assert entry_gaps.tolist() == [2, 2, 7, 7, 7, 7, 2]
    assert entry_codes.tolist() == [1, 2, 0, 0, 0, 0, 3]
    assert gaps.positions_of(entry_gaps).tolist() == [2, 5, 13, 21, 29, 37, 40]


@given(
    st.lists(st.integers(0, 10**6), unique=True, max_size=300),
    st.integers(1, 16),
)
def test_fillers_round_trip(positions, bits):
    positions = np.array(sorted(positions), dtype=np.int64)
    codes = np.arange(1, positions.size + 1)
    entry_gaps, entry_codes = gaps.with_fillers(positions, codes, bits)
    assert entry_gaps.max(initial=0) <= (1 << bits) - 1
    decoded = gaps.positions_of(entry_gaps)
    real = entry_codes != 0
    assert np.array_equal(decoded[real], positions)
    assert np.array_equal(entry_codes[real], codes)
    # fillers carry the maximal gap, and exactly as many as the overflow rule asks
    assert np.all(entry_gaps[~real] == (1 << bits) - 1)
    assert (~real).sum() == int((gaps.real_gaps(positions) >> bits).sum())


def test_best_index_bits_prefers_narrow_widths_for_dense_positions():
    dense = np.arange(0, 10000, 2)  # every gap is 1
    assert gaps.best_index_bits(dense, np.ones(dense.size, int), 2) == 1
    rng = np.random.default_rng(0)
    sparse = np.sort(rng.choice(10**6, 2000, replace=False))  # mean gap ~500
    bits = gaps.best_index_bits(sparse, np.ones(sparse.size, int), 2)
    assert 6 <= bits <= 10
