"""The chooser's "float16" extra: tensors it would store exactly go to RAW_NARROW where every
element keeps float16's 11 significant bits, and calibration measures them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

import dcformat
from converters import PAPER, SAFE, apply_options, save_module
from converters.compress.tensor import compress_weight
from converters.weight import Weight


def _encoding(array: np.ndarray, config=SAFE, name: str = "bn.running_var", role=None) -> str:
    dtype = {np.float16: "float16"}.get(array.dtype.type, array.dtype.name)
    return compress_weight(Weight(name, array, dtype, role=role), config).report.encoding


def test_small_float_tensors_are_stored_as_float16() -> None:
    values = np.abs(np.random.default_rng(0).normal(size=96)).astype(np.float32) + 0.01
    tensor = compress_weight(Weight("bn.running_var", values, "float32"), SAFE)
    assert tensor.report.encoding == "RAW_NARROW" and tensor.report.weight_bits == 16
    decoded = tensor.values(Weight("bn.running_var", values, "float32"))
    assert tensor.narrowed and np.array_equal(decoded, values.astype(np.float16).astype(np.float32))
    assert tensor.error == pytest.approx(np.linalg.norm(values - decoded) / np.linalg.norm(values))
    assert 0 < tensor.error <= 2**-11 and not tensor.lossless
    assert tensor.encoded.stored_bytes < values.nbytes * 0.6
    assert _encoding(values.astype(np.float64)) == "RAW_NARROW"


@pytest.mark.parametrize(
    "array, role",
    [
        (np.array([1.0, 2e-5, 3.0] * 10, np.float32), None),  # 2e-5 is subnormal in float16
        (np.array([1.0, 7e4] * 10, np.float32), None),  # past float16's largest
        (np.array([1.0, np.nan] * 10, np.float32), None),  # not finite
        (np.full(30, 0.02, np.float32), "scale"),  # a quantization scale stays exact
        (np.ones(30, np.float16), None),  # already 16 bits
        (np.arange(30, dtype=np.int32), None),
    ],
)
def test_what_stays_exact(array, role) -> None:
    assert _encoding(array, role=role) == "RAW"


def test_only_with_the_chooser_and_the_extra() -> None:
    values = np.linspace(0.5, 1.5, 64, dtype=np.float32)
    assert _encoding(values, apply_options(SAFE, [("extras", "scales,outliers")])) == "RAW"
    assert _encoding(values, apply_options(SAFE, [("extras", "float16")])) == "RAW_NARROW"
    assert _encoding(values, PAPER) == "RAW"  # fixed bits, no chooser: as the paper


def test_calibration_measures_the_float16_tensors(tmp_path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4)).eval()
    with torch.no_grad():
        net[1].running_mean.normal_()
        net[1].running_var.uniform_(0.5, 2.0)
    items = [torch.randn(4, 8) for _ in range(3)]
    report = save_module(net, tmp_path / "m.dcnn", replace(SAFE, min_size=10**6), calibration=items)
    encodings = {row.name: row.encoding for row in report.tensors}
    assert set(encodings.values()) <= {"RAW", "RAW_NARROW"} and encodings["1.running_var"] == "RAW_NARROW"
    decoded = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4)).eval()
    decoded.load_state_dict(dcformat.load_file(tmp_path / "m.dcnn", framework="torch"))
    with torch.no_grad():
        errors = [float((decoded(x) - net(x)).norm() / net(x).norm()) for x in items]
    assert report.output_error > 0 and report.output_error == pytest.approx(np.mean(errors), rel=1e-4)
