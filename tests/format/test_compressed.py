"""Running on the compressed form: the matvec kernels against their numpy fallback and a dense
reference, the compressed torch modules against dense ones, and load_into(compressed=True)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import dcformat
from dcformat.codec import matvec
from dcformat.interop import compressed
from dcformat.interop import torch as dcnn_torch

# the environment a test sets holds for all its examples
native_modes = pytest.mark.parametrize(
    "no_native", [False, pytest.param(True, id="numpy")] if matvec.AVAILABLE else [True]
)


def sparse_weight(rng: np.random.Generator, rows: int, cols: int, density: float, k: int):
    """A random sparse codebook weight: (dense float32 matrix, positions, codes, codebook)."""
    book = rng.standard_normal(k).astype(np.float32)
    book[0] = 0.0
    positions = np.flatnonzero(rng.random(rows * cols) < density)
    codes = rng.integers(1, k, positions.size) if k > 1 else np.zeros(positions.size, dtype=np.int64)
    dense = np.zeros(rows * cols, dtype=np.float32)
    dense[positions] = book[codes]
    return dense.reshape(rows, cols), positions, codes.astype(np.uint8), book


def assert_product(got: np.ndarray, w: np.ndarray, x: np.ndarray, expect: np.ndarray) -> None:
    """Equal within float32 rounding of sums of |w||x| terms (any summation order)."""
    bound = np.abs(w).astype(np.float64) @ np.abs(x).astype(np.float64)
    assert got.shape == expect.shape
    assert np.all(np.abs(got - expect) <= 1e-5 * bound.reshape(expect.shape) + 1e-30)


@native_modes
@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.integers(0, 70),
    cols=st.integers(1, 90),
    density=st.floats(0, 1),
    k=st.integers(1, 256),
    p=st.integers(1, 37),
    n=st.integers(1, 3),
    wide=st.booleans(),
    transposed=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_spmm_matches_dense(monkeypatch, no_native, rows, cols, density, k, p, n, wide, transposed, seed):
    monkeypatch.setenv("DCNN_NO_NATIVE", "1" if no_native else "0")
    rng = np.random.default_rng(seed)
    w, positions, codes, book = sparse_weight(rng, rows, cols, density, k)
    indptr, columns = matvec.csr_of(positions, rows, cols)
    if wide:
        columns = columns.astype(np.uint32)
    x = rng.standard_normal((n, cols, p)).astype(np.float32)
    y = matvec.spmm(indptr, columns, codes, book, x, transposed_out=transposed, threads=2)
    for i in range(n):
        expect = (w.astype(np.float64) @ x[i]).astype(np.float32)
        assert_product(y[i].T if transposed else y[i], w, x[i], expect)


@native_modes
@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.integers(0, 50),
    cols=st.integers(0, 70),
    k=st.integers(1, 256),
    b=st.integers(0, 9),
    seed=st.integers(0, 2**32 - 1),
)
def test_lut_matches_dense(monkeypatch, no_native, rows, cols, k, b, seed):
    monkeypatch.setenv("DCNN_NO_NATIVE", "1" if no_native else "0")
    rng = np.random.default_rng(seed)
    book = rng.standard_normal(k).astype(np.float32)
    codes = rng.integers(0, k, (rows, cols)).astype(np.uint8)
    x = rng.standard_normal((b, cols)).astype(np.float32)
    y = matvec.lut(codes, book, x, threads=2)
    w = book[codes]
    assert_product(y, x, w.T, (x.astype(np.float64) @ w.T).astype(np.float32))


@pytest.mark.skipif(not matvec.AVAILABLE, reason="the native kernels are not built")
def test_kernel_and_fallback_agree_on_a_large_product(monkeypatch):
    """Large enough for the kernel's threads and vector loops (AVX-512 where there)."""
    rng = np.random.default_rng(1)
    w, positions, codes, book = sparse_weight(rng, 700, 3000, 0.1, 32)
    indptr, columns = matvec.csr_of(positions, 700, 3000)
    for p, wide in [(1, False), (2, True), (3, False), (4, False), (14, True), (16, False), (40, True)]:
        x = rng.standard_normal((1, 3000, p)).astype(np.float32)
        index = columns.astype(np.uint32) if wide else columns
        native = matvec.spmm(indptr, index, codes, book, x, threads=2)
        monkeypatch.setenv("DCNN_NO_NATIVE", "1")
        fallback = matvec.spmm(indptr, columns, codes, book, x, threads=2)
        monkeypatch.setenv("DCNN_NO_NATIVE", "0")
        assert_product(native[0], w, x[0], fallback[0])


@pytest.mark.skipif(not matvec.AVAILABLE, reason="the native kernels are not built")
def test_codes_past_the_codebook_read_zero_in_kernel_and_fallback(monkeypatch):
    """The kernel's codebook held in registers (at most 32 values) reads a code past it as 0,
    like the zero-padded table of the other paths and the numpy fallback."""
    rng = np.random.default_rng(3)
    rows, cols = 40, 300
    positions = np.flatnonzero(rng.random(rows * cols) < 0.5)
    codes = rng.integers(0, 256, positions.size).astype(np.uint8)
    book = rng.standard_normal(20).astype(np.float32)
    indptr, columns = matvec.csr_of(positions, rows, cols)
    for p in (1, 2, 4, 8, 16):
        x = rng.standard_normal((1, cols, p)).astype(np.float32)
        native = matvec.spmm(indptr, columns, codes, book, x)
        monkeypatch.setenv("DCNN_NO_NATIVE", "1")
        fallback = matvec.spmm(indptr, columns, codes, book, x)
        monkeypatch.setenv("DCNN_NO_NATIVE", "0")
        np.testing.assert_allclose(native, fallback, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not matvec.AVAILABLE, reason="the native kernels are not built")
def test_kernel_thread_pool_under_concurrent_calls_and_fork():
    """The kernels' persistent thread pool: calls from several Python threads at once (one uses
    the pool, the others start threads) and from a forked child (an empty pool) give the
    one-thread products exactly (same rows per thread, same summation order)."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(3)
    _, positions, codes, book = sparse_weight(rng, 600, 2000, 0.2, 32)
    indptr, columns = matvec.csr_of(positions, 600, 2000)
    lut_codes = rng.integers(0, 32, (600, 2000)).astype(np.uint8)
    xs = [rng.standard_normal((1, 2000, p)).astype(np.float32) for p in (1, 4, 16)]

    def products(threads: int) -> list[np.ndarray]:
        out = [matvec.spmm(indptr, columns, codes, book, x, threads=threads) for x in xs]
        return out + [matvec.lut(lut_codes, book, x[0].T.copy(), threads=threads) for x in xs]

    one = products(1)
    with ThreadPoolExecutor(4) as pool:
        for got in pool.map(lambda _: products(3), range(12)):
            for a, b in zip(got, one, strict=True):
                np.testing.assert_array_equal(a, b)
    if hasattr(os, "fork"):
        pid = os.fork()
        if pid == 0:  # the child: exit status 0 only if its products match
            ok = all(np.array_equal(a, b) for a, b in zip(products(2), one, strict=True))
            os._exit(0 if ok else 1)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


@native_modes
def test_bad_form_is_a_dcnn_error(monkeypatch, no_native):
    monkeypatch.setenv("DCNN_NO_NATIVE", "1" if no_native else "0")
    book = np.array([0.0, 1.0], dtype=np.float32)
    x = np.ones((1, 4, 2), dtype=np.float32)
    codes = np.ones(3, dtype=np.uint8)
    good = np.array([0, 2, 3], dtype=np.int64)
    with pytest.raises(dcformat.DcnnError, match="column index out of range"):
        matvec.spmm(good, np.array([0, 4, 1], dtype=np.uint16), codes, book, x)
    with pytest.raises(dcformat.DcnnError, match="indptr"):
        matvec.spmm(np.array([0, 3, 2], dtype=np.int64), np.zeros(3, np.uint16), codes, book, x)
    with pytest.raises(dcformat.DcnnError, match="indptr"):
        matvec.spmm(np.array([0, 2, 4], dtype=np.int64), np.zeros(3, np.uint16), codes, book, x)
    with pytest.raises(dcformat.DcnnError, match="codebook"):
        matvec.spmm(good, np.zeros(3, np.uint16), codes, np.zeros(257, np.float32), x)
    with pytest.raises(dcformat.DcnnError, match="x must"):
        matvec.spmm(good, np.zeros(3, np.uint16), codes, book, x.astype(np.float64))
    with pytest.raises(dcformat.DcnnError, match="columns"):
        matvec.lut(np.zeros((2, 3), np.uint8), book, np.ones((1, 4), np.float32))


@pytest.mark.skipif(not matvec.AVAILABLE, reason="the native kernels are not built")
@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("p", [1, 3, 16])
def test_a_column_out_of_range_anywhere_in_a_row_is_caught(p, wide):
    """Rows (of 3) long enough for every step of the vector loops (32 at a time, 16, then a
    masked tail): one bad column at any of those places is an error, never a read past x."""
    rng = np.random.default_rng(4)
    cols = 100
    book = np.arange(8, dtype=np.float32)
    x = np.ones((1, cols, p), dtype=np.float32)
    for length in (7, 16, 40, 57):
        indptr = np.array([0, 5, 5 + length, 10 + length], dtype=np.int64)
        for at in sorted({5, 5 + length // 2, 5 + length - 1}):
            columns = rng.integers(0, cols, indptr[-1]).astype(np.uint32 if wide else np.uint16)
            columns[at] = cols if not wide else 2**32 - 1
            codes = rng.integers(0, 8, indptr[-1]).astype(np.uint8)
            with pytest.raises(dcformat.DcnnError, match="column index out of range"):
                matvec.spmm(indptr, columns, codes, book, x)


def test_a_corrupted_buffer_in_a_compressed_linear_is_a_dcnn_error():
    rng = np.random.default_rng(6)
    _, positions, codes, book = sparse_weight(rng, 40, 300, 0.3, 16)
    indptr, columns = matvec.csr_of(positions, 40, 300)
    layer = compressed.SparseCodedLinear(300, 40, indptr, columns, codes.astype(np.uint8), book)
    layer.cols[len(layer.cols) // 2] = 300  # past the 300 inputs
    for batch in (1, 5):
        with pytest.raises(dcformat.DcnnError, match="column index out of range"):
            layer(torch.randn(batch, 300))


def save_linear(path, rng, rows, cols, density, bits, *, dense_codes=False):
    """A file with one coded linear layer 'fc' (weight and bias); the dense weight and bias."""
    k = 1 << bits
    if dense_codes:
        book = rng.standard_normal(k).astype(np.float32)
        codes = rng.integers(0, k, (rows, cols))
        weight, q = book[codes], dcformat.Quantized(book, codes, (rows, cols))
    else:
        weight, positions, codes, book = sparse_weight(rng, rows, cols, density, k)
        q = dcformat.Quantized(book, codes, (rows, cols), positions=positions)
    bias = rng.standard_normal(rows).astype(np.float32)
    dcformat.save_file({"fc.weight": q, "fc.bias": bias}, path)
    return weight, bias


def net(rows: int, cols: int) -> torch.nn.Module:
    """A module holding one linear layer named 'fc'."""
    module = torch.nn.Module()
    module.fc = torch.nn.Linear(cols, rows)
    return module


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 60),
    density=st.floats(0, 1),
    bits=st.integers(1, 8),
    batch=st.integers(1, 20),
    kind=st.sampled_from([compressed.SPARSE, compressed.LUT]),
    layout=st.sampled_from(["2-D", "3-D", "strided"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_compressed_linear_matches_dense(scratch, rows, cols, density, bits, batch, kind, layout, seed):
    rng = np.random.default_rng(seed)
    path = scratch / "fc.dcnn"
    weight, bias = save_linear(path, rng, rows, cols, density, bits, dense_codes=kind == compressed.LUT)
    layer = torch.nn.Linear(cols, rows)
    with dcformat.safe_open(path) as f:
        module = compressed.from_codes(layer, f.get_codes("fc.weight"), kind)
    module.bias.data.copy_(torch.from_numpy(bias))
    x = rng.standard_normal((batch, cols)).astype(np.float32)
    given_x = {
        "2-D": torch.from_numpy(x),
        "3-D": torch.from_numpy(x).view(1, batch, cols),
        "strided": torch.from_numpy(np.ascontiguousarray(x.T)).t(),  # not contiguous
    }[layout]
    got = module(given_x).reshape(batch, rows).numpy()
    expect = (x.astype(np.float64) @ weight.T.astype(np.float64) + bias).astype(np.float32)
    bound = np.abs(x).astype(np.float64) @ np.abs(weight.T) + np.abs(bias)
    assert np.all(np.abs(got - expect) <= 1e-5 * bound + 1e-30)


@pytest.mark.parametrize("stride", [1, 2])
def test_sparse_conv1x1_matches_dense(scratch, stride):
    rng = np.random.default_rng(stride)
    _, positions, codes, book = sparse_weight(rng, 24, 40, 0.2, 16)
    path = scratch / "conv.dcnn"
    q = dcformat.Quantized(book, codes, (24, 40, 1, 1), positions=positions)
    dcformat.save_file({"conv.weight": q, "conv.bias": rng.standard_normal(24).astype(np.float32)}, path)
    dense = torch.nn.Module()
    dense.conv = torch.nn.Conv2d(40, 24, 1, stride=stride)
    dcnn_torch.load_into(dense, path)
    with dcformat.safe_open(path) as f:
        module = compressed.from_codes(dense.conv, f.get_codes("conv.weight"), compressed.SPARSE)
    x = torch.randn(3, 40, 7, 5)
    with torch.no_grad():
        torch.testing.assert_close(module(x), dense.conv(x), rtol=1e-4, atol=1e-5)


def test_load_into_compressed_replaces_a_large_sparse_layer(scratch, monkeypatch):
    rng = np.random.default_rng(3)
    path = scratch / "fc.dcnn"
    save_linear(path, rng, 600, 1500, 0.08, 5)
    dense, comp = net(600, 1500), net(600, 1500)
    assert dcnn_torch.load_into(dense, path) == dcnn_torch.load_into(comp, path, compressed=True)
    assert isinstance(comp.fc, compressed.SparseCodedLinear)
    assert {"fc.indptr", "fc.cols", "fc.codes", "fc.codebook", "fc.bias"} == set(comp.state_dict())
    assert comp.fc.stored_bytes() < 0.25 * dense.fc.weight.numel() * 4
    x = torch.randn(5, 1500)
    with torch.no_grad():
        torch.testing.assert_close(comp.fc(x), dense.fc(x), rtol=1e-4, atol=1e-4)
        # the torch fallback (no native kernel, other dtypes and devices) computes the same
        monkeypatch.setenv("DCNN_NO_NATIVE", "1")
        torch.testing.assert_close(comp.fc(x), dense.fc(x), rtol=1e-4, atol=1e-4)
        monkeypatch.setenv("DCNN_NO_NATIVE", "0")
        wide = comp.fc.to(torch.float64)(x.double())
        torch.testing.assert_close(wide, dense.fc(x).double(), rtol=1e-4, atol=1e-4)


def test_small_or_dense_layers_stay_dense(scratch):
    rng = np.random.default_rng(4)
    path = scratch / "fc.dcnn"
    save_linear(path, rng, 10, 20, 0.1, 4)
    small = net(10, 20)
    dcnn_torch.load_into(small, path, compressed=True)
    assert type(small.fc) is torch.nn.Linear
    save_linear(path, rng, 600, 1500, 0.9, 5)
    full = net(600, 1500)
    dcnn_torch.load_into(full, path, compressed=True)
    assert type(full.fc) is torch.nn.Linear


def test_format_1_1_tensors_stay_dense(scratch):
    """Scales and outliers are not in the kernels' codes: such a layer is loaded dense, exactly."""
    rng = np.random.default_rng(6)
    _, positions, codes, book = sparse_weight(rng, 600, 1500, 0.08, 32)
    q = dcformat.Quantized(
        book,
        codes,
        (600, 1500),
        positions=positions,
        scales=rng.uniform(0.5, 2, 600).astype(np.float16),
        outliers=([3, 70_000], [50.0, -50.0]),
    )
    path = scratch / "fc.dcnn"
    dcformat.save_file({"fc.weight": q, "fc.bias": np.zeros(600, np.float32)}, path)
    module = net(600, 1500)
    dcnn_torch.load_into(module, path, compressed=True)
    assert type(module.fc) is torch.nn.Linear
    assert np.array_equal(module.fc.weight.detach().numpy(), dcformat.load_file(path)["fc.weight"])


def test_choose_follows_density_and_size():
    assert compressed.choose(4096, 9216, int(0.09 * 4096 * 9216), dense_codes=False) == compressed.SPARSE
    assert compressed.choose(4096, 9216, int(0.9 * 4096 * 9216), dense_codes=False) == compressed.DENSE
    assert compressed.choose(10, 100, 300, dense_codes=False) == compressed.DENSE
    assert compressed.choose(384, 384, 384 * 384, dense_codes=True) != compressed.SPARSE


def test_contender_is_named_only_where_the_model_cannot_tell():
    """Close calls (predicted within BAND of dense) are timed; clear ones and small layers are not."""
    fc8 = int(0.25 * 1000 * 4096)
    assert compressed.contender(1000, 4096, fc8, dense_codes=False) == compressed.SPARSE
    assert compressed.contender(4096, 9216, int(0.09 * 4096 * 9216), dense_codes=False) is None
    assert compressed.contender(4096, 9216, 4096 * 9216, dense_codes=False) is None  # dense: far off
    assert compressed.contender(10, 100, 300, dense_codes=False) is None
    # cache-resident layers (LeNet-300-100's fc1 and fc2): timed where sparse enough, else dense
    assert compressed.contender(300, 784, int(0.07 * 300 * 784), dense_codes=False) == compressed.SPARSE
    assert compressed.contender(300, 784, int(0.5 * 300 * 784), dense_codes=False) is None
    assert compressed.contender(100, 300, int(0.07 * 100 * 300), dense_codes=False) is None
    assert compressed.choose(300, 784, int(0.07 * 300 * 784), dense_codes=False) == compressed.DENSE
    assert compressed.contender(1536, 384, 1536 * 384, dense_codes=True) == compressed.LUT
    sparse, lut = compressed.SPARSE, compressed.LUT
    for rows, cols, nnz, kind in [
        (1000, 4096, fc8, sparse),
        (512, 512, 512 * 128, sparse),
        (1536, 384, 0, lut),
    ]:
        nnz = nnz or rows * cols
        ratios = [
            compressed.predicted_ns(kind, rows, cols, nnz, b)
            / compressed.predicted_ns("dense", rows, cols, nnz, b)
            for b in range(1, compressed.MAX_BATCH + 1)
        ]
        assert any(compressed.BAND[0] < r < compressed.BAND[1] for r in ratios)


@pytest.mark.parametrize(
    ("ratios", "kept"),
    [
        ((0.5, 0.5, 0.5), True),
        ((1.04, 0.7, 0.65), True),  # a little slower at batch 1, clearly faster over the range
        ((1.1, 0.5, 0.5), True),  # 10% slower at batch 1, where dense is 2x slower at 4 and 16
        ((1.3, 0.8, 0.75), False),  # 30% slower at batch 1 for at most a third faster elsewhere
        ((0.95, 0.95, 0.95), False),  # never slower, but not clearly faster (TIMED_MARGIN)
        ((2.0, 2.0, 2.0), False),
    ],
)
def test_close_call_goes_to_the_form_timed_faster(scratch, monkeypatch, ratios, kept):
    rng = np.random.default_rng(8)
    path = scratch / "fc.dcnn"
    weight, bias = save_linear(path, rng, 512, 512, 0.25, 5)
    with dcformat.safe_open(path) as f:
        nnz = f.info("fc.weight").nonzeros
    assert compressed.contender(512, 512, nnz, dense_codes=False) == compressed.SPARSE
    seen = []

    def timer(new, dense_weight, layer_bias, max_batch):
        seen.append(max_batch)
        assert isinstance(new, compressed.SparseCodedLinear)
        np.testing.assert_array_equal(dense_weight.numpy(), weight)
        return {b: (r * 1e-3, 1e-3) for b, r in zip((1, 4, 16), ratios, strict=True)}

    monkeypatch.setattr(compressed, "time_forms", timer)
    module = net(512, 512)
    dcnn_torch.load_into(module, path, compressed=True)
    # a loss is timed again (TIMED_WINDOWS), a win at once
    assert seen == [compressed.MAX_BATCH] * (1 if kept else compressed.TIMED_WINDOWS)
    assert isinstance(module.fc, compressed.SparseCodedLinear) == kept
    x = torch.randn(3, 512)
    with torch.no_grad():
        torch.testing.assert_close(
            module.fc(x), torch.from_numpy(x.numpy() @ weight.T + bias), rtol=1e-4, atol=1e-4
        )


@pytest.mark.parametrize(
    ("windows", "kept"),
    [
        ([(1.9, 0.5, 0.5), (0.6, 0.9, 0.9)], True),  # a spoilt batch-1 time; the best of both wins
        ([(1.2, 1.2, 1.2), (1.1, 1.1, 1.1)], False),  # slower in every window
    ],
)
def test_a_lost_close_call_is_timed_again_on_the_best_of_both(scratch, monkeypatch, windows, kept):
    rng = np.random.default_rng(8)
    path = scratch / "fc.dcnn"
    save_linear(path, rng, 512, 512, 0.25, 5)
    calls = iter(windows)

    def timer(new, dense_weight, layer_bias, max_batch):
        return {b: (r * 1e-3, 1e-3) for b, r in zip((1, 4, 16), next(calls), strict=True)}

    monkeypatch.setattr(compressed, "time_forms", timer)
    module = net(512, 512)
    dcnn_torch.load_into(module, path, compressed=True)
    assert isinstance(module.fc, compressed.SparseCodedLinear) == kept
    assert next(calls, None) is None  # both windows were timed


def test_time_forms_times_both_forms_at_each_batch():
    rng = np.random.default_rng(2)
    weight, positions, codes, book = sparse_weight(rng, 300, 900, 0.2, 32)
    indptr, cols = matvec.csr_of(positions, 300, 900)
    new = compressed.SparseCodedLinear(900, 300, indptr, cols, codes.astype(np.uint8), book)
    for max_batch, batches in [(16, [1, 4, 16]), (2, [1, 2])]:
        times = compressed.time_forms(new, torch.from_numpy(weight), None, max_batch)
        assert sorted(times) == batches
        assert all(0 < t < 1 for pair in times.values() for t in pair)


def test_time_forms_warms_both_forms_up_before_timing(monkeypatch):
    rng = np.random.default_rng(3)
    weight, positions, codes, book = sparse_weight(rng, 100, 200, 0.2, 16)
    indptr, cols = matvec.csr_of(positions, 100, 200)
    inner = compressed.SparseCodedLinear(200, 100, indptr, cols, codes.astype(np.uint8), book)
    calls: list[float] = []

    class Counting(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(time.perf_counter())
            return inner(x)

    monkeypatch.setattr(compressed, "TIMED_WARMUP_S", 0.05)
    start = time.perf_counter()
    times = compressed.time_forms(Counting(), torch.from_numpy(weight), None, 4)
    timed_calls = 2 * compressed.TIMED_ROUNDS * len(times)  # an untimed and a timed call each
    warm_up = len(calls) - timed_calls
    assert warm_up > len(times)  # more than one call a batch: it ran for its time
    assert calls[warm_up] >= start + 0.05  # the rounds start after the warm-up


@pytest.mark.parametrize("stream", ["codes", "gaps"])
def test_corrupt_file_is_caught_when_loading_compressed(scratch, stream):
    rng = np.random.default_rng(5)
    path = scratch / "fc.dcnn"
    save_linear(path, rng, 600, 1500, 0.08, 5)
    with dcformat.safe_open(path) as f:
        section = getattr(f._record("fc.weight"), stream).data
        at = f.preamble.data_start + section.offset + section.length // 2
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))
    module = net(600, 1500)
    with pytest.raises(dcformat.ChecksumError):
        dcnn_torch.load_into(module, path, compressed=True)
    assert type(module.fc) is torch.nn.Linear  # nothing was swapped in


def test_strict_missing_and_shape_mismatch_as_dense(scratch):
    rng = np.random.default_rng(6)
    path = scratch / "fc.dcnn"
    save_linear(path, rng, 600, 1500, 0.08, 5)
    extra = net(600, 1500)
    extra.other = torch.nn.Linear(3, 3)
    for compress in (False, True):
        with pytest.raises(dcformat.DcnnError, match="missing keys"):
            dcnn_torch.load_into(extra, path, compressed=compress)
    loose = {}
    for compress in (False, True):
        module = net(600, 1500)
        module.other = torch.nn.Linear(3, 3)
        loose[compress] = dcnn_torch.load_into(module, path, strict=False, compressed=compress)
    assert loose[True] == loose[False] == (["other.weight", "other.bias"], [])
    wrong = net(600, 1499)
    with pytest.raises(dcformat.DcnnError, match="shape"):
        dcnn_torch.load_into(wrong, path, compressed=True)
    assert type(wrong.fc) is torch.nn.Linear


TIER_CHECK = """
import os, numpy as np
from dcformat.codec import matvec
rng = np.random.default_rng(7)
rows, cols = 300, 2000
positions = np.flatnonzero(rng.random(rows * cols) < 0.1)
book = rng.standard_normal(40).astype(np.float32)
codes = rng.integers(0, 40, positions.size).astype(np.uint8)
indptr, columns = matvec.csr_of(positions, rows, cols)
dense_codes = rng.integers(0, 40, (rows, cols)).astype(np.uint8)
xs = [rng.standard_normal((2, cols, p)).astype(np.float32) for p in (1, 5, 16, 33)]
x2 = rng.standard_normal((3, cols)).astype(np.float32)
got = []
for no_native in ("0", "1"):
    os.environ["DCNN_NO_NATIVE"] = no_native
    out = [matvec.spmm(indptr, columns, codes, book, x, threads=2) for x in xs]
    got.append([*out, matvec.lut(dense_codes, book, x2, threads=2)])
print(matvec.features()["isa"], max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(*got)))
"""


@pytest.mark.skipif(not matvec.AVAILABLE, reason="the native kernels are not built")
@pytest.mark.parametrize("isa", ["generic", "avx2"])
def test_every_instruction_set_path_matches_numpy(isa):
    """The kernels' narrower paths (chosen at import; capped by DCNN_MATVEC_ISA) agree too."""
    env = dict(os.environ, DCNN_MATVEC_ISA=isa)
    run = subprocess.run(
        [sys.executable, "-c", TIER_CHECK], env=env, capture_output=True, text=True, check=True
    )
    used, error = run.stdout.split()
    assert used in (isa, "generic")  # a machine without AVX2 runs the generic path
    assert float(error) < 1e-5


def test_conv1x1_replaced_only_when_asked_and_sparse_enough(scratch):
    rng = np.random.default_rng(8)
    _, positions, codes, book = sparse_weight(rng, 512, 256, 0.03, 16)
    path = scratch / "conv.dcnn"
    q = dcformat.Quantized(book, codes, (512, 256, 1, 1), positions=positions)
    dcformat.save_file({"conv.weight": q}, path)
    module = torch.nn.Module()
    module.conv = torch.nn.Conv2d(256, 512, 1, bias=False)
    dcnn_torch.load_into(module, path, compressed=True)
    assert type(module.conv) is torch.nn.Conv2d  # the feature map size is unknown there
    with dcformat.safe_open(path) as f:
        assert compressed.replace_coded(module, f, ["conv.weight"], conv_pixels=7 * 7) == {"conv.weight"}
        assert isinstance(module.conv, compressed.SparseCodedConv2d)
        big = torch.nn.Module()
        big.conv = torch.nn.Conv2d(256, 512, 1, bias=False)
        assert compressed.replace_coded(big, f, ["conv.weight"], conv_pixels=56 * 56) == set()


def test_changes_to_the_buffers_are_seen(scratch):
    rng = np.random.default_rng(9)
    path = scratch / "fc.dcnn"
    save_linear(path, rng, 600, 1500, 0.08, 5)
    module = net(600, 1500)
    dcnn_torch.load_into(module, path, compressed=True)
    x = torch.randn(3, 1500)
    with torch.no_grad():
        before = module.fc(x) - module.fc.bias
        module.fc.codebook.mul_(2)  # in place: the kernel's cached views must follow
        torch.testing.assert_close(module.fc(x) - module.fc.bias, 2 * before, rtol=1e-4, atol=1e-4)
        module.fc.to(torch.float64).to(torch.float32)  # new buffer objects
        torch.testing.assert_close(module.fc(x) - module.fc.bias, 2 * before, rtol=1e-4, atol=1e-4)
        state = {k: v.clone() for k, v in module.state_dict().items()}
        state["fc.codebook"] /= 2
        module.load_state_dict(state)
        torch.testing.assert_close(module.fc(x) - module.fc.bias, before, rtol=1e-4, atol=1e-4)
        module.fc.codebook.data = module.fc.codebook * 3  # the same object, new memory
        torch.testing.assert_close(module.fc(x) - module.fc.bias, 3 * before, rtol=1e-4, atol=1e-4)
        bias = module.fc.bias.clone()
        module.fc.bias.data = bias + 1  # the bias too
        torch.testing.assert_close(module.fc(x) - bias, 3 * before + 1, rtol=1e-4, atol=1e-4)
