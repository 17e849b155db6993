"""Format 1.1: per-channel scales and exact outliers (spec 5.6, 5.7) round trip exactly,
through the native and the numpy decoders alike, and bad writer input is refused."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import dcformat
from dcformat import dtypes
from dcformat.codec import decode as codec

shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)


def expected_of(q: dcformat.Quantized) -> np.ndarray:
    """The decoded tensor as numpy gives it, computed from the spec's words."""
    numel = int(np.prod(q.shape, dtype=np.int64))
    flat = np.zeros(numel, np.float32)
    where = q.positions if q.sparse else np.arange(numel)
    flat[where] = q.codebook.astype(np.float32)[q.codes]
    if q.scales is not None and numel:
        row = np.arange(numel) // (numel // q.shape[0])
        flat = flat * q.scales.astype(np.float32)[row // q.rows_per_scale]
    stored = dtypes.convert_floats(flat, q.dtype)
    if q.outliers is not None:
        stored[q.outliers[0]] = q.outliers[1]
    stored = stored.reshape(q.shape)
    return dtypes.bfloat16_to_float32(stored) if q.dtype == "bfloat16" else stored


@st.composite
def extended_tensors(draw: st.DrawFn) -> dcformat.Quantized:
    shape = draw(shapes)
    numel = int(np.prod(shape, dtype=np.int64))
    dtype = draw(st.sampled_from(dtypes.FLOAT_NAMES))
    book_dtype = draw(st.sampled_from([np.float32, np.float16]))
    k = draw(st.integers(1, 8))
    floats = st.floats(-1e4, 1e4, width=16)
    book = np.array(draw(st.lists(floats, min_size=k, max_size=k)), book_dtype)
    sparse = draw(st.booleans())
    if sparse:
        book[0] = 0
        positions = np.flatnonzero(draw(hnp.arrays(np.bool_, numel)))
        codes = draw(hnp.arrays(np.int64, positions.size, elements=st.integers(0, k - 1)))
    else:
        positions = None
        codes = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, k - 1)))
    scales, rows_per_scale = None, 1
    if shape and draw(st.booleans()):
        rows_per_scale = draw(st.integers(1, 3))
        n = -(-shape[0] // rows_per_scale)
        scales = draw(
            hnp.arrays(
                draw(st.sampled_from([np.float32, np.float16])),
                n,
                elements=st.floats(0.0010004043579101562, 1000.0, width=16),
            )
        )
    outliers = None
    if numel and (scales is None or draw(st.booleans())):
        picked = np.flatnonzero(draw(hnp.arrays(np.bool_, numel)))
        if draw(st.booleans()):
            picked = np.arange(numel)  # every element an outlier
        if not picked.size:
            picked = np.array([numel - 1])
        values = draw(hnp.arrays(np.float32, picked.size, elements=st.floats(width=32)))
        outliers = (picked, values)
    if scales is None and outliers is None:  # a 0-d or empty tensor without rows: plain codes
        return dcformat.Quantized(book, codes, shape, positions=positions, dtype=dtype)
    return dcformat.Quantized(
        book,
        codes,
        shape,
        positions=positions,
        dtype=dtype,
        scales=scales,
        rows_per_scale=rows_per_scale,
        outliers=outliers,
    )


@given(extended_tensors())
def test_extended_round_trip_on_both_decoders(tmp_path_factory, tensor):
    """Both writers (1.1-exact and compact), both decoders; the file declares the lowest minor
    version it needs: 1.1 for an _EXT tensor, 1.0 otherwise, 1.2 only when written compact."""
    expected = expected_of(tensor)
    for compact in (False, True):
        path = tmp_path_factory.mktemp("ext") / "t.dcnn"
        dcformat.save_file({"t": tensor}, path, chunk_size=5, compact=compact)
        results = []
        for native in [True, False] if codec.AVAILABLE else [False]:
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("DCNN_NO_NATIVE", "0" if native else "1")
                results.append(dcformat.load_file(path)["t"])
        for got in results:
            assert got.dtype == expected.dtype and got.shape == expected.shape
            assert got.tobytes() == expected.tobytes()
        assert dcformat.validate(path).ok
        with dcformat.safe_open(path) as f:
            exact = (1, 1) if tensor.extended else (1, 0)
            assert f.version == exact or (compact and f.version == (1, 2))
            assert f.info("t").encoding.endswith("_EXT") == tensor.extended


@pytest.mark.parametrize(("sparse", "dtype"), [(False, "float16"), (True, "float32"), (True, "bfloat16")])
def test_large_tensor_native_threads_and_numpy_agree(tmp_path: Path, sparse: bool, dtype: str) -> None:
    """Large enough for the threaded native path (parts of 2^18 symbols and more)."""
    rng = np.random.default_rng(5)
    shape = (300, 1000)
    book = np.sort(rng.normal(0, 1, 64)).astype(np.float32)
    book[0] = 0
    outliers = np.sort(rng.choice(300_000, 1500, replace=False))
    positions = np.flatnonzero(rng.random(300_000) < 0.95) if sparse else None
    n = positions.size if sparse else 300_000
    tensor = dcformat.Quantized(
        book,
        rng.integers(0, 64, n if sparse else shape),
        shape,
        positions=positions,
        dtype=dtype,
        scales=rng.uniform(0.01, 10, 300).astype(np.float16),
        outliers=(outliers, rng.standard_t(1, outliers.size) * 50),
    )
    dcformat.save_file({"t": tensor}, tmp_path / "t.dcnn")
    expected = expected_of(tensor)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DCNN_NO_NATIVE", "1")
        numpy_path = dcformat.load_file(tmp_path / "t.dcnn")["t"]
    threaded = dcformat.load_file(tmp_path / "t.dcnn", threads=2)["t"]
    assert numpy_path.tobytes() == expected.tobytes() == threaded.tobytes()
    with dcformat.safe_open(tmp_path / "t.dcnn") as f:
        codes = f.get_codes("t")
        assert codes.scales is not None and np.array_equal(codes.scales, tensor.scales.astype(np.float32))
        assert np.array_equal(codes.outliers[0], outliers)
        assert codes.outliers[1].tobytes() == tensor.outliers[1].tobytes()
        assert np.array_equal(
            codes.codes, tensor.codes[tensor.codes != 0] if sparse else tensor.codes.reshape(shape)
        )


def test_plain_tensors_still_write_format_1_0(tmp_path: Path) -> None:
    book = np.array([0.0, 1.0], np.float32)
    dcformat.save_file({"t": dcformat.Quantized(book, [1, 0, 1], (3,))}, tmp_path / "t.dcnn")
    assert (tmp_path / "t.dcnn").read_bytes()[8:12] == b"\x01\x00\x00\x00"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape": (), "codes": [0], "scales": np.ones(1, np.float32)}, "scalar"),
        ({"scales": np.ones(3, np.float32)}, "scales for 4 rows"),
        ({"scales": np.array([1, 0, 1, 1], np.float32)}, "finite and > 0"),
        ({"scales": np.array([1, np.inf, 1, 1], np.float16)}, "finite and > 0"),
        ({"scales": np.ones(4, np.float64)}, "float32 or float16"),
        ({"scales": np.ones(2, np.float32), "rows_per_scale": 0}, "positive int"),
        ({"outliers": ([3, 2], [1.0, 2.0])}, "strictly increasing"),
        ({"outliers": ([0, 8], [1.0, 2.0])}, "strictly increasing"),
        ({"outliers": ([0], [1.0, 2.0])}, "as many values"),
        ({"outliers": ([0], np.array([1], np.int32))}, "must be floats"),
        ({"outliers": (np.zeros(0, int), np.zeros(0))}, "at least one"),
    ],
)
def test_writer_refuses_bad_scales_and_outliers(kwargs, message) -> None:
    args = {"shape": (4, 2), "codes": np.zeros((4, 2), int)} | kwargs
    with pytest.raises(dcformat.EncodeError, match=message):
        dcformat.Quantized(np.array([0.0, 1.0], np.float32), **args)


def test_skeleton_is_stored_zstd_when_smaller(tmp_path: Path) -> None:
    """Source.skeleton_zstd (1.1): a compressible skeleton is stored as one zstd frame and comes
    back whole; one that does not shrink stays plain in a 1.0 file."""
    prototxt = b"".join(b'layer { name: "conv%d" type: "Convolution" }\n' % i for i in range(300))
    noise = np.random.default_rng(0).bytes(300)
    for skeleton, version in ((prototxt, (1, 1)), (noise, (1, 0))):
        path = tmp_path / f"{version[1]}.dcnn"
        dcformat.save_file(
            {"w": np.ones(2, np.float32)},
            path,
            source=dcformat.Source("caffe-release", skeleton),
            compact=False,  # the 1.1 feature alone
        )
        with dcformat.safe_open(path) as f:
            assert f.version == version and f.source().skeleton == skeleton
            stored = f.header.source
            assert (
                (len(stored.skeleton_zstd) < len(skeleton) / 5)
                if version == (1, 1)
                else not stored.skeleton_zstd
            )
