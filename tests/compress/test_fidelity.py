"""The error-bounded per-tensor chooser (converters/compress/fidelity.py), the default, and its
wiring into conversion."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import dcformat
from converters.compress import fidelity as fidelity_module
from converters.compress.config import PAPER, SAFE, apply_options
from converters.compress.fidelity import (
    allocate,
    choices,
    fidelity_db,
    role_of,
    sqnr_db,
)
from converters.compress.share import share_weights
from converters.compress.tensor import CompressedTensor, compress_weight
from converters.weight import EXACT_ROLES, Weight

CHOOSER = SAFE  # the chooser is the default


def _heavy_tailed(n: int = 40_000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_t(2.5, size=(n // 200, 200)) * 0.02).astype(np.float32)


def _coded_snr(weight: Weight, config) -> tuple[float, CompressedTensor]:
    tensor = compress_weight(weight, config)
    return sqnr_db(weight.array, tensor.values(weight)), tensor


def coded(tensor: CompressedTensor) -> bool:
    return tensor.codes is not None


@pytest.mark.parametrize("floor", [25.0, 35.0])
def test_floor_met_on_heavy_tailed_tensor(floor: float) -> None:
    weight = Weight("layer.weight", _heavy_tailed(), "float32")
    snr, tensor = _coded_snr(weight, replace(CHOOSER, snr=floor))
    assert coded(tensor)
    assert snr >= floor
    # the old default, 8-bit density k-means, misses a floor the chooser meets
    old_snr, _ = _coded_snr(weight, replace(SAFE, snr=None))
    assert old_snr < 35.0


def test_fewer_bits_when_tensor_allows() -> None:
    rng = np.random.default_rng(1)
    gaussian = rng.standard_normal(20_000)
    low, high = choices(gaussian, snr_db=20.0)[0], choices(gaussian, snr_db=35.0)[0]
    assert low.bits is not None and high.bits is not None
    assert low.bits < high.bits <= 8
    # a tensor of 3 distinct values needs 2 bits whatever the floor below exactness
    levels = rng.choice([-0.5, 0.25, 1.0], size=5000)
    assert choices(levels, snr_db=60.0)[0].bits == 2


def test_unreachable_floor_is_stored_exactly() -> None:
    weight = Weight("fc.weight", _heavy_tailed(20_000, seed=2), "float32")
    tensor = compress_weight(weight, replace(CHOOSER, snr=150.0))
    assert not coded(tensor) and tensor.error == 0.0
    assert tensor.report.encoding == "RAW"


def test_exact_roles_stay_exact() -> None:
    array = _heavy_tailed(8192, seed=3)  # rank 2, large: the shape alone would compress it
    for role in ("bias", "norm", "scale", "zero_point"):
        weight = Weight("lstm_B", array, "float32", role=role)
        tensor = compress_weight(weight, CHOOSER)
        assert not coded(tensor) and tensor.error == 0.0
    # the same tensor with no graph role is coded
    assert coded(compress_weight(Weight("lstm_B", array, "float32"), CHOOSER))


def test_roles_from_names_shapes_and_dtypes() -> None:
    assert role_of("q", (64, 64), "int8") == "int"
    assert role_of("encoder.layer.0.attention.output.LayerNorm.weight", (384,), "float32") == "norm"
    assert role_of("features.0.1.bn1.weight", (32, 1), "float32") == "norm"
    assert role_of("transformer.ln_f.weight", (8, 8), "float32") == "norm"
    assert role_of("subnet.weight", (300, 784), "float32") == "weight"  # "bn" inside a word
    assert role_of("fc1.bias", (300,), "float32") == "bias"
    assert role_of("embeddings.word_embeddings.weight", (1000, 32), "float32") == "embedding"
    assert role_of("fc1.weight", (300, 784), "float32") == "weight"
    assert role_of("x", (2, 2048), "float32", "bias") == "bias"
    assert EXACT_ROLES >= {"bias", "norm", "scale", "zero_point"}  # and integers are never coded


def test_integer_tensors_stay_exact() -> None:
    rng = np.random.default_rng(4)
    array = rng.integers(-128, 128, size=(64, 64), dtype=np.int8)
    weight = Weight("q.weight_quantized", array, "int8")
    tensor = compress_weight(weight, CHOOSER)
    assert not coded(tensor) and tensor.error == 0.0 and tensor.report.encoding == "RAW"


def test_snr_option_and_config_roundtrip() -> None:
    config = apply_options(SAFE, [("snr", "30")])
    assert config.snr == 30.0
    assert type(config).from_dict(config.to_dict()) == config
    assert "snr" not in PAPER.to_dict() and "snr_spread" not in PAPER.to_dict()  # as before
    assert apply_options(SAFE, [("bits", "6")]).snr is None  # bits given: the chooser is off
    assert apply_options(SAFE, [("snr", "off")]).snr is None
    assert apply_options(SAFE, [("bits", "fc*=6")]).snr == SAFE.snr  # a rule takes its tensors out
    with pytest.raises(dcformat.DcnnError):
        apply_options(SAFE, [("snr", "-3")])


def test_allocation_gives_large_tensors_lower_floors_within_the_spread() -> None:
    floors = allocate(30.0, {"big": 1_000_000, "mid": 100_000, "small": 1_000}, spread_db=10.0)
    assert floors["big"] < floors["mid"] < floors["small"]
    assert all(20.0 <= f <= 40.0 for f in floors.values())
    assert floors["small"] == 40.0  # clipped
    assert set(allocate(30.0, {"a": 10, "b": 10_000}, spread_db=0.0).values()) == {30.0}


def test_conversion_meets_each_floor_and_keeps_exact_tensors(tmp_path) -> None:
    from safetensors.numpy import save_file

    from converters import convert

    rng = np.random.default_rng(6)
    tensors = {
        "embed.weight": _heavy_tailed(60_000, seed=7),
        "fc.weight": (rng.standard_normal((64, 128)) * 0.05).astype(np.float32),
        "fc.bias": rng.standard_normal(64).astype(np.float32),
        "norm.weight": (1 + 0.1 * rng.standard_normal(128)).astype(np.float32),
        "step": np.arange(4096, dtype=np.int64).reshape(64, 64),
    }
    source, out = tmp_path / "m.safetensors", tmp_path / "m.dcnn"
    save_file(tensors, str(source))
    config = replace(CHOOSER, snr=30.0)
    report = convert(source, out, config)
    floors = allocate(30.0, {"embed.weight": 60_000, "fc.weight": 64 * 128}, config.snr_spread)
    decoded = dcformat.load_file(out)
    for name, floor in floors.items():
        assert fidelity_db(tensors[name], decoded[name]) >= floor
        assert report.errors[name] > 0  # coded, not stored exactly
    for name in ("fc.bias", "norm.weight"):  # stored as float16 (RAW_NARROW)
        assert np.array_equal(decoded[name], tensors[name].astype(np.float16).astype(np.float32))
    assert np.array_equal(decoded["step"], tensors["step"]) and decoded["step"].dtype == np.int64
    assert out.stat().st_size < source.stat().st_size / 3


def test_the_snr_flag_moves_the_floor_and_turns_the_chooser_off(tmp_path, capsys) -> None:
    from safetensors.numpy import save_file

    from converters.cli import convert_main

    save_file({"fc.weight": _heavy_tailed(60_000, seed=8)}, str(tmp_path / "m.safetensors"))
    sizes = {}
    for snr in ("off", "30", "42"):
        out = tmp_path / f"{snr}.dcnn"
        assert convert_main([str(tmp_path / "m.safetensors"), "-o", str(out), "-q", "--snr", snr]) == 0
        sizes[snr] = out.stat().st_size
        with dcformat.safe_open(out) as f:
            bits = f.info("fc.weight").weight_bits
        assert (bits == 8) if snr == "off" else (bits != 8 or sizes[snr] != sizes["off"])
    assert sizes["30"] < sizes["42"]
    assert (
        convert_main([str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "x.dcnn"), "--snr", "loud"]) == 2
    )
    assert "--snr loud" in capsys.readouterr().err


@pytest.mark.parametrize("bits", [1, 3, 8, 12])
def test_sample_sqnr_of_the_native_sums_is_numpys(monkeypatch, bits: int) -> None:
    # the chooser's sample SQNR through the C error sums: sqnr_db's value to the bit
    rng = np.random.default_rng(bits)
    values = rng.laplace(size=70001) * 0.02
    values[:300] = 0.0  # a zero symbol
    sample = fidelity_module.search_sample(values)
    shared = share_weights(sample, bits, init="linear", max_iter=1)
    want = fidelity_module.sqnr_db(sample, shared.decode())
    for flag in ("0", "1"):
        monkeypatch.setenv("DCNN_NO_NATIVE", flag)
        assert fidelity_module._shared_sqnr_db(sample, shared) == want
