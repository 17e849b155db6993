"""1-D k-means: Lloyd's behaviour, the three initializations, and weight sharing."""

import numpy as np
import pytest

from converters.compress.kmeans import init_centroids, kmeans_1d
from converters.compress.share import share_weights


def lloyd_reference(x: np.ndarray, centroids: np.ndarray, iterations: int) -> np.ndarray:
    """Textbook Lloyd with a dense distance matrix (small inputs only)."""
    c = centroids.astype(np.float64).copy()
    for _ in range(iterations):
        labels = np.abs(x[:, None] - c[None, :]).argmin(axis=1)
        for j in range(len(c)):
            if (labels == j).any():
                c[j] = x[labels == j].mean()
    return c


@pytest.mark.parametrize("init", ["linear", "density", "random"])
@pytest.mark.parametrize("k", [2, 7, 32])
def test_distortion_never_increases(init: str, k: int) -> None:
    rng = np.random.default_rng(k)
    x = np.concatenate([rng.normal(-0.1, 0.03, 3000), rng.laplace(0.05, 0.02, 2000)])
    result = kmeans_1d(x.astype(np.float32), k, init=init, max_iter=500, seed=3)
    d = result.distortions
    assert len(d) >= 2
    assert np.all(np.diff(d) <= 1e-12 * d[0])
    # The reported distortion is the real squared error of the returned assignment.
    err = x.astype(np.float32).astype(np.float64) - result.centroids[result.labels]
    if result.converged:
        assert np.isclose(d[-1], np.sum(err**2), rtol=1e-9)


@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_matches_textbook_lloyd(init: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(400)
    k, iterations = 9, 6
    start = init_centroids(np.sort(x), k, init, seed=5)
    result = kmeans_1d(x, k, init=init, max_iter=iterations, seed=5)
    assert result.iterations == iterations
    np.testing.assert_allclose(result.centroids, lloyd_reference(x, start, iterations), atol=1e-12)


def test_labels_are_nearest_centroids() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal(20_000).astype(np.float32)
    result = kmeans_1d(x, 16, max_iter=3)
    distances = np.abs(x.astype(np.float64)[:, None] - result.centroids[None, :])
    assert np.allclose(distances[np.arange(len(x)), result.labels], distances.min(axis=1))
    assert np.all(np.diff(result.centroids) >= 0)


def test_stops_when_assignments_are_stable() -> None:
    x = np.array([0.0, 0.1, 0.2, 5.0, 5.1, 5.2])
    result = kmeans_1d(x, 2, max_iter=100)
    assert result.converged
    assert result.iterations < 100
    np.testing.assert_allclose(result.centroids, [0.1, 5.1])
    np.testing.assert_array_equal(result.labels, [0, 0, 0, 1, 1, 1])


def test_linear_init_is_evenly_spaced_over_the_range() -> None:
    x = np.sort(np.random.default_rng(3).standard_normal(1000))
    c = init_centroids(x, 17, "linear")
    assert c[0] == x[0] and c[-1] == x[-1]
    np.testing.assert_allclose(np.diff(c), (x[-1] - x[0]) / 16)


def test_density_init_is_quantiles() -> None:
    x = np.sort(np.random.default_rng(4).exponential(size=999))
    k = 10
    c = init_centroids(x, k, "density")
    np.testing.assert_allclose(c, np.quantile(x, (np.arange(k) + 0.5) / k), rtol=1e-12)
    # Dense regions get more centroids: half of them lie below the median.
    assert np.sum(c < np.median(x)) == k // 2


def test_random_init_samples_weights_and_is_seeded() -> None:
    x = np.sort(np.random.default_rng(5).standard_normal(500))
    a = init_centroids(x, 12, "random", seed=7)
    assert np.isin(a, x).all()
    assert len(np.unique(a)) == 12  # without replacement
    assert np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, init_centroids(x, 12, "random", seed=7))
    assert not np.array_equal(a, init_centroids(x, 12, "random", seed=8))


def test_empty_clusters_keep_their_centroid_deterministically() -> None:
    # Two tight groups far apart: the linear init's middle centroids get no weights.
    x = np.concatenate([np.linspace(-1.01, -0.99, 50), np.linspace(0.99, 1.01, 50)])
    start = init_centroids(np.sort(x), 8, "linear")
    result = kmeans_1d(x, 8, max_iter=50)
    used = np.unique(result.labels)
    assert len(used) < 8
    empty = np.setdiff1d(np.arange(8), used)
    np.testing.assert_array_equal(result.centroids[empty], start[empty])
    again = kmeans_1d(x, 8, max_iter=50)
    np.testing.assert_array_equal(result.centroids, again.centroids)
    np.testing.assert_array_equal(result.labels, again.labels)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="init"):
        kmeans_1d(np.ones(4), 2, init="kmeans++")
    with pytest.raises(ValueError, match="NaN"):
        kmeans_1d(np.array([1.0, np.nan]), 2)
    with pytest.raises(ValueError, match="no data"):
        kmeans_1d(np.array([]), 2)


def test_sharing_keeps_exact_zeros_as_code_zero() -> None:
    rng = np.random.default_rng(6)
    w = rng.standard_normal((40, 30)).astype(np.float32)
    w[rng.random(w.shape) < 0.7] = 0.0
    shared = share_weights(w, 3)
    assert shared.zero_symbol
    assert shared.codebook[0] == 0.0 and len(shared.codebook) == 8
    np.testing.assert_array_equal(shared.codes == 0, w.reshape(-1) == 0)
    np.testing.assert_array_equal(shared.decode() == 0, w.reshape(-1) == 0)
    # The 7 survivor centroids are the k-means of the nonzero weights alone.
    np.testing.assert_allclose(shared.codebook[1:], kmeans_1d(w[w != 0], 7).centroids.astype(np.float32))


def test_sharing_without_zeros_uses_every_code() -> None:
    w = np.random.default_rng(7).uniform(0.1, 1.0, size=(64, 64)).astype(np.float32)
    shared = share_weights(w, 4, init="density")
    assert not shared.zero_symbol
    assert len(shared.codebook) == 16
    assert set(np.unique(shared.codes)) == set(range(16))
    assert np.abs(shared.decode() - w.reshape(-1)).max() < 0.05


def test_native_lloyd_equals_numpy_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    # The C loop (_kmeans.c) must give numpy's centroids, distortions and stop, to the bit:
    # they decide the codes written into files.
    from converters.compress import kmeans as kmeans_module

    if kmeans_module._native is None:
        pytest.skip("the native k-means is not built (DCNN_NO_NATIVE builds run the numpy path)")
    rng = np.random.default_rng(7)
    samples = {
        "normal": rng.standard_normal(20000),
        "ties": rng.integers(-5, 5, 3000).astype(np.float64),
        "float32": (rng.standard_normal(9000) * 0.02).astype(np.float32),
        "few": rng.laplace(size=5) * 1e-3,
    }
    for name, x in samples.items():
        for k, init, iters in ((1, "linear", 3), (3, "random", 40), (16, "density", 30), (300, "linear", 25)):
            results = []
            for flag in ("1", "0"):
                monkeypatch.setenv("DCNN_NO_NATIVE", flag)
                results.append(kmeans_1d(np.sort(x), k, init=init, max_iter=iters, seed=k))
            numpy_result, native_result = results
            assert numpy_result.centroids.tobytes() == native_result.centroids.tobytes(), name
            assert numpy_result.distortions.tobytes() == native_result.distortions.tobytes(), name
            assert numpy_result.converged == native_result.converged
            np.testing.assert_array_equal(numpy_result.labels, native_result.labels)
            # sorted input takes its labels as runs: each value's nearest centroid all the same
            c = native_result.centroids
            want = np.searchsorted((c[:-1] + c[1:]) / 2, np.sort(x).astype(np.float64), side="right")
            np.testing.assert_array_equal(native_result.labels, want)
