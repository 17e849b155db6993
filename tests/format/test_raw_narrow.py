"""RAW_NARROW (format 1.3, spec 5.9): float32/float64 tensors stored as float16 or bfloat16."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import dcformat
from dcformat import dcnn_pb2 as pb
from dcformat.dtypes import bfloat16_bits, bfloat16_to_float32


def _round_trip(tmp_path, tensors, **options):
    path = tmp_path / "n.dcnn"
    dcformat.save_file(tensors, path, **options)
    return path, dcformat.load_file(path)


@pytest.mark.parametrize("stored", ["float16", "bfloat16"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_decodes_to_the_widened_stored_values(tmp_path, stored, dtype):
    array = np.random.default_rng(0).normal(size=(6, 7)).astype(dtype)
    array[0, :3] = (0.0, -0.0, 1e-3)
    narrow = dcformat.Narrow(array, stored)
    path, out = _round_trip(tmp_path, {"w": narrow})
    assert out["w"].dtype == dtype and out["w"].shape == (6, 7)
    if stored == "float16":
        expected = array.astype(np.float16).astype(dtype)
    else:
        expected = bfloat16_to_float32(bfloat16_bits(array.astype(np.float32))).astype(dtype)
    assert np.array_equal(out["w"], expected) and np.array_equal(narrow.values(), expected)
    with dcformat.safe_open(path) as f:
        info = f.info("w")
        assert (info.encoding, info.dtype, info.nonzeros, info.weight_bits) == (
            "RAW_NARROW",
            np.dtype(dtype).name,
            40,
            16,
        )
        assert f.version == (1, 3)
    assert dcformat.validate(path).ok


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=9), elements=st.floats(width=32)))
def test_any_float32_tensor_round_trips_as_float16(tmp_path_factory, array):
    path, out = _round_trip(tmp_path_factory.mktemp("h"), {"w": dcformat.Narrow(array, zstd_level=3)})
    with np.errstate(over="ignore"):
        expected = array.astype(np.float16).astype(np.float32)
    assert np.array_equal(out["w"], expected, equal_nan=True)
    assert np.array_equal(np.signbit(out["w"]), np.signbit(expected))  # signed zeros kept
    assert dcformat.validate(path).ok


def test_asked_for_float16_it_gives_the_stored_elements(tmp_path):
    array = np.linspace(-3, 3, 50, dtype=np.float32)
    path, _ = _round_trip(tmp_path, {"w": dcformat.Narrow(array)})
    with dcformat.safe_open(path) as f:
        half = f.get_tensor("w", dtype="float16")
    assert half.dtype == np.float16 and np.array_equal(half, array.astype(np.float16))


def test_zstd_when_smaller(tmp_path):
    array = np.repeat(np.arange(8, dtype=np.float32), 500)
    encoded = dcformat.encode("w", dcformat.Narrow(array, zstd_level=3))
    assert encoded.record.compression == pb.COMPRESSION_ZSTD and encoded.stored_bytes < array.size * 2
    _, out = _round_trip(tmp_path, {"w": dcformat.Narrow(array, zstd_level=3)})
    assert np.array_equal(out["w"], array)


def test_files_without_it_keep_their_version(tmp_path):
    path, _ = _round_trip(tmp_path, {"w": np.ones(3, np.float32)})
    with dcformat.safe_open(path) as f:
        assert f.version < (1, 3)


@pytest.mark.parametrize(
    "make",
    [
        lambda: dcformat.Narrow(np.arange(4, dtype=np.int32)),
        lambda: dcformat.Narrow(np.ones(4, np.float16)),
        lambda: dcformat.Narrow(np.ones(4, np.float32), "float32"),
        lambda: dcformat.Narrow(np.ones([1] * 33, np.float32)),
    ],
)
def test_what_cannot_be_narrowed_is_an_encode_error(make):
    with pytest.raises(dcformat.EncodeError):
        make()


def test_the_uncompact_writer_refuses_it(tmp_path):
    with pytest.raises(dcformat.EncodeError, match="compact"):
        dcformat.save_file({"w": dcformat.Narrow(np.ones(3, np.float32))}, tmp_path / "a.dcnn", compact=False)
    assert not (tmp_path / "a.dcnn").exists()


def test_it_has_no_codes(tmp_path):
    path, _ = _round_trip(tmp_path, {"w": dcformat.Narrow(np.ones((2, 2), np.float32))})
    with dcformat.safe_open(path) as f, pytest.raises(dcformat.DcnnError, match="no codes"):
        f.get_codes("w")
