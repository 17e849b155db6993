"""The chooser's forms (converters/compress/fidelity.py, tensor.py): per tensor, row scales
and exact outliers where they make the file smaller at the tensor's floor."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import dcformat
from converters.compress import fidelity
from converters.compress.config import SAFE, apply_options
from converters.compress.tensor import CompressedTensor, compress_weight, outlier_positions
from converters.errors import ConvertError
from converters.weight import Weight
from dcformat import dtypes

FLOOR = 30.0


def _spiky(seed: int = 0) -> np.ndarray:
    """Gaussian weights with 0.05% of them 500 to 1000 standard deviations: no grid of up to
    12 bits meets a floor on both, so plain coding stores it exactly; outliers pay."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((256, 256)) * 0.02
    spikes = rng.choice(w.size, w.size // 2000, replace=False)
    w.reshape(-1)[spikes] = rng.choice([-1.0, 1.0], spikes.size) * rng.uniform(10, 20, spikes.size)
    return w.astype(np.float32)


def _rows_apart(seed: int = 0) -> np.ndarray:
    """Rows whose ranges span 1000x: row scales pay."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((256, 256)) * np.geomspace(1e-3, 1.0, 256)[:, None]).astype(np.float32)


def _coded(array: np.ndarray, extras: tuple[str, ...], dtype: str = "float32") -> CompressedTensor:
    weight = Weight("layer.weight", dtypes.convert_floats(array, dtype), dtype)
    return compress_weight(weight, replace(SAFE, snr=FLOOR, snr_spread=0.0, extras=extras))


def _file_values(tensor: CompressedTensor, tmp_path) -> np.ndarray:
    path = tmp_path / "t.dcnn"
    with dcformat.Writer(path) as writer:
        writer.add_encoded(tensor.encoded)
    dcformat.validate(path)
    return dcformat.load_file(path)["layer.weight"]


@pytest.mark.parametrize(
    ("make", "extra", "used"),
    [
        (_spiky, "outliers", lambda t: t.outliers is not None),
        (_rows_apart, "scales", lambda t: t.scales is not None),
    ],
)
def test_a_form_is_chosen_where_it_shrinks_the_file(make, extra: str, used, tmp_path) -> None:
    array = make()
    weight = Weight("layer.weight", array, "float32")
    plain, extended = _coded(array, ()), _coded(array, (extra,))
    assert used(extended)
    assert extended.encoded.stored_bytes < 0.5 * plain.encoded.stored_bytes
    decoded = _file_values(extended, tmp_path)
    np.testing.assert_array_equal(decoded, extended.values(weight))  # what the converter measured
    assert fidelity.fidelity_db(array, decoded) >= FLOOR  # the floor holds on the file's values
    error = np.linalg.norm(decoded.astype(np.float64) - array) / np.linalg.norm(array)
    assert extended.error == pytest.approx(error, rel=1e-5)


def test_the_outliers_come_back_exact(tmp_path) -> None:
    array = _spiky(1)
    tensor = _coded(array, ("outliers",))
    positions, values = tensor.outliers
    decoded = _file_values(tensor, tmp_path).reshape(-1)
    flat = array.reshape(-1)
    np.testing.assert_array_equal(decoded[positions], flat[positions])
    np.testing.assert_array_equal(values, flat[positions])
    coded = np.ones(flat.size, dtype=bool)
    coded[positions] = False
    assert np.abs(flat[positions]).min() >= np.abs(flat[coded]).max()  # the largest |w|


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_outliers_in_16_bit_tensors_keep_their_stored_bits(dtype: str, tmp_path) -> None:
    array = _spiky(2)
    tensor = _coded(array, ("scales", "outliers"), dtype)
    assert tensor.outliers is not None and tensor.scales is None  # scales: float32 tensors only
    stored = dtypes.convert_floats(array, dtype).reshape(-1)
    path = tmp_path / "t.dcnn"
    with dcformat.Writer(path) as writer:
        writer.add_encoded(tensor.encoded)
    with dcformat.safe_open(path) as f:
        positions, values = f.get_codes("layer.weight").outliers
    np.testing.assert_array_equal(values.view(np.uint16), stored.view(np.uint16)[positions])


@pytest.mark.parametrize("seed", range(4))
def test_never_larger_than_the_plain_chooser(seed: int) -> None:
    rng = np.random.default_rng(seed)
    arrays = [
        (rng.standard_normal((128, 300)) * 0.05).astype(np.float32),
        (rng.standard_t(3, (64, 500)) * 0.01).astype(np.float32),
        _rows_apart(seed),
        _spiky(seed),
    ]
    for array in arrays:
        plain, extended = _coded(array, ()), _coded(array, ("scales", "outliers"))
        assert extended.encoded.stored_bytes <= plain.encoded.stored_bytes


def test_bounded_rows_of_one_range_stay_plain() -> None:
    array = np.random.default_rng(3).uniform(-1, 1, (128, 512)).astype(np.float32)
    tensor = _coded(array, ("scales", "outliers"))
    assert tensor.scales is None and tensor.outliers is None  # extras would only cost bytes


def test_outlier_positions_count_ties_and_limits() -> None:
    values = np.array([0.1, -3.0, 0.2, 3.0, 3.0, -0.5, 0.0, 1.0], dtype=np.float32)
    positions = outlier_positions(values, 2 / 8)
    assert positions.dtype == np.int64 and positions.size == 2  # one of the three ties at 3 stays coded
    assert set(positions) < {1, 3, 4}
    np.testing.assert_array_equal(outlier_positions(values, 3 / 8), [1, 3, 4])
    assert outlier_positions(values, 0.6) is None  # over half: nothing to code


def test_extras_option_and_config() -> None:
    assert SAFE.extras == ("scales", "outliers", "float16")
    assert apply_options(SAFE, [("extras", "none")]).extras == ()
    assert apply_options(SAFE, [("extras", "outliers")]).extras == ("outliers",)
    config = apply_options(SAFE, [("extras", "scales")])
    assert type(config).from_dict(config.to_dict()) == config
    with pytest.raises(ConvertError, match="extras"):
        apply_options(SAFE, [("extras", "scales,bogus")])
    with pytest.raises(ValueError, match="extras"):
        replace(SAFE, extras="scales")
