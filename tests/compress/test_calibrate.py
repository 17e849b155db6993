"""Calibration: importance-weighted k-means, and per-tensor bits searched for an output-error
target that the written file then meets (or a clear error, with nothing written)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import dcformat
from converters import SAFE, ConvertError, apply_options, convert, save_module
from converters.cli import convert_main
from converters.compress.calibrate import calibrate
from converters.weight import Weight


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 16))


def items(seed: int, n: int = 6) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 64, generator=g) for _ in range(n)]


def output_error(net: nn.Module, path, batches) -> float:
    """Mean relative output error of the network decoded from ``path`` against ``net``."""
    decoded = mlp()
    decoded.load_state_dict({k: torch.from_numpy(v) for k, v in dcformat.load_file(path).items()})
    with torch.no_grad():
        return float(np.mean([((decoded(x) - net(x)).norm() / net(x).norm()).item() for x in batches]))


@pytest.mark.parametrize("target", [0.005, 0.03])
def test_the_target_is_met_by_the_written_file(tmp_path, target: float) -> None:
    net = mlp()
    config = apply_options(SAFE, [("max-output-error", str(target))])
    report = save_module(net, tmp_path / "m.dcnn", config, calibration=items(1))
    assert report.output_error <= target
    assert output_error(net, tmp_path / "m.dcnn", items(1)) == pytest.approx(report.output_error, rel=1e-3)
    assert report.config["max_output_error"] == target


def test_a_looser_target_gives_a_smaller_file(tmp_path) -> None:
    net = mlp()
    sizes = []
    for target in ("0.003", "0.05"):
        config = apply_options(SAFE, [("max-output-error", target)])
        sizes.append(save_module(net, tmp_path / f"{target}.dcnn", config, calibration=items(1)).dcnn_bytes)
    assert sizes[1] < 0.8 * sizes[0]


def test_an_unreachable_target_is_an_error_and_nothing_is_written(tmp_path) -> None:
    net = nn.Sequential(nn.Linear(64, 128), nn.Dropout(0.5), nn.Linear(128, 16)).train()  # never the same
    config = apply_options(SAFE, [("max-output-error", "0.001")])
    with pytest.raises(ConvertError, match=r"cannot reach an output error of 0\.001: the best found is"):
        save_module(net, tmp_path / "m.dcnn", config, calibration=items(1))
    assert list(tmp_path.iterdir()) == []


def test_a_weight_whose_input_is_never_active_gets_no_centroid() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.1, size=(64, 64)).astype(np.float32)
    w[:, 0] = 50 + rng.normal(0, 1, 64)  # outliers on an input that calibration never drives
    importance = np.ones_like(w)
    importance[:, 0] = 0.0
    weight = Weight("fc.weight", w, "float32", "fc", role="weight")
    config = apply_options(SAFE, [("bits", "4")])

    def evaluate(replaced) -> float:
        return 0.0

    plain = calibrate([weight], config, evaluate).tensors["fc.weight"]
    weighted = calibrate([weight], config, evaluate, importance={"fc.weight": importance}).tensors[
        "fc.weight"
    ]
    assert plain.codebook.max() > 40  # plain k-means spends centroids on the outliers
    assert weighted.codebook.max() < 1  # calibrated: every centroid serves the weights that matter
    used = w[:, 1:].reshape(-1)
    assert (
        np.abs(weighted.values(weight)[:, 1:].reshape(-1) - used).mean()
        < np.abs(plain.values(weight)[:, 1:].reshape(-1) - used).mean()
    )


def test_a_module_that_returns_no_tensor_is_told_to_wrap_it(tmp_path) -> None:
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 64)

        def forward(self, x: torch.Tensor) -> dict:
            return {"y": self.fc(x)}

    with pytest.raises(ConvertError, match="not a tensor: wrap it"):
        save_module(Pair(), tmp_path / "m.dcnn", calibration=items(1))


def test_a_target_without_calibration_data_is_a_usage_error(tmp_path) -> None:
    with pytest.raises(ConvertError, match="needs calibration data") as info:
        save_module(mlp(), tmp_path / "m.dcnn", apply_options(SAFE, [("max-output-error", "0.01")]))
    assert info.value.rule == "usage"


def onnx_mlp(path) -> None:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((32, 128)).astype(np.float32) / 6, "w1"),
        numpy_helper.from_array(rng.standard_normal((128, 8)).astype(np.float32) / 11, "w2"),
        numpy_helper.from_array(np.arange(4096, dtype=np.int8).reshape(64, 64), "table"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Tanh", ["h"], ["t"]),
        helper.make_node("MatMul", ["t", "w2"], ["y"]),
        helper.make_node("Gather", ["table", "ids"], ["rows"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, [2]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8]),
            helper.make_tensor_value_info("rows", TensorProto.INT8, [2, 64]),
        ],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def samples(n: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"x": rng.standard_normal((n, 4, 32)).astype(np.float32), "ids": rng.integers(0, 64, (n, 2))}


def test_onnx_calibrated_conversion_from_the_cli(tmp_path, capsys) -> None:
    onnx_mlp(tmp_path / "m.onnx")
    np.savez(tmp_path / "cal.npz", **samples())
    argv = [
        str(tmp_path / "m.onnx"),
        "-o",
        str(tmp_path / "m.dcnn"),
        "--calibration",
        str(tmp_path / "cal.npz"),
    ]
    assert convert_main([*argv, "--max-output-error", "0.01", "--report", str(tmp_path / "r.json")]) == 0
    assert "output error on the calibration data" in capsys.readouterr().out
    config = apply_options(SAFE, [("max-output-error", "0.01")])
    report = convert(tmp_path / "m.onnx", tmp_path / "again.dcnn", config, calibration=tmp_path / "cal.npz")
    assert 0 < report.output_error <= 0.01
    loaded = dcformat.load_file(tmp_path / "m.dcnn")
    assert np.array_equal(loaded["table"], np.arange(4096, dtype=np.int8).reshape(64, 64))  # int8: exact


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": samples()["x"]}, "lacks graph input 'ids'"),
        ({**samples(), "z": np.zeros((5, 3))}, "'z' is not an input of the graph"),
        ({**samples(), "x": samples()["x"].astype(np.float64)}, "'x' is float64; the graph takes float32"),
        ({**samples(), "x": samples()["x"][:, 0]}, "'x' has 2 dimensions; expected 3"),
        ({**samples(), "x": np.full((5, 4, 32), np.nan, np.float32)}, "'x' holds NaN"),
        ({}, "holds no arrays"),
    ],
    ids=["missing", "unknown", "dtype", "rank", "nan", "empty"],
)
def test_calibration_data_that_does_not_fit_the_graph(tmp_path, arrays, message: str) -> None:
    onnx_mlp(tmp_path / "m.onnx")
    np.savez(tmp_path / "cal.npz", **arrays)
    with pytest.raises(ConvertError, match=message):
        convert(tmp_path / "m.onnx", tmp_path / "m.dcnn", SAFE, calibration=tmp_path / "cal.npz")
    assert not (tmp_path / "m.dcnn").exists()


def test_onnx_reported_error_is_the_written_files_even_for_constant_held_weights(tmp_path) -> None:
    import onnxruntime as ort

    rng = np.random.default_rng(2)
    w1 = (rng.standard_normal((32, 128)) / 6).astype(np.float32)
    w2 = (rng.standard_normal((128, 8)) / 11).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w1"], value=numpy_helper.from_array(w1)),  # not an initializer
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Tanh", ["h"], ["t"]),
        helper.make_node("MatMul", ["t", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
        [numpy_helper.from_array(w2, "w2")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    x = rng.standard_normal((4, 4, 32)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=x)
    config = apply_options(SAFE, [("max-output-error", "0.05")])
    report = convert(tmp_path / "m.onnx", tmp_path / "m.dcnn", config, calibration=tmp_path / "cal.npz")
    assert {info.name for info in report.tensors} == {"w1", "w2"}
    convert(tmp_path / "m.dcnn", tmp_path / "back.onnx")
    original, rebuilt = (ort.InferenceSession(str(tmp_path / f)) for f in ("m.onnx", "back.onnx"))
    errors = []
    for sample in x:
        (y0,), (y,) = original.run(None, {"x": sample}), rebuilt.run(None, {"x": sample})
        errors.append(np.linalg.norm(y - y0) / np.linalg.norm(y0))
    assert 0 < report.output_error <= 0.05
    assert float(np.mean(errors)) == pytest.approx(report.output_error, rel=1e-3)


def test_calibration_is_never_larger_than_the_data_free_file_that_meets_the_target(tmp_path) -> None:
    net = mlp()
    free = save_module(net, tmp_path / "free.dcnn", SAFE)
    reached = output_error(net, tmp_path / "free.dcnn", items(1))
    config = apply_options(SAFE, [("max-output-error", str(reached * 1.01))])
    report = save_module(net, tmp_path / "cal.dcnn", config, calibration=items(1))
    assert report.output_error <= reached * 1.01
    # the tensors' bytes: the file's metadata also records the target and the error reached
    assert sum(t.stored_bytes for t in report.tensors) <= sum(t.stored_bytes for t in free.tensors)


def two_outputs(path) -> None:
    """One input, two outputs of very different sizes: a wide one and a narrow one whose
    weight calibration must not let drift because the wide output hides it."""
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.standard_normal((32, 512)).astype(np.float32) / 6, "wide"),
        numpy_helper.from_array(rng.standard_normal((32, 64)).astype(np.float32) / 6, "narrow"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "wide"], ["a"]),
        helper.make_node("MatMul", ["x", "narrow"], ["h"]),
        helper.make_node("ReduceSum", ["h"], ["b"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32])],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [4, 512]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, []),
        ],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.mark.parametrize("mode", ["concat", "per-output"])
def test_output_error_modes_bound_what_they_say(tmp_path, mode: str) -> None:
    import onnxruntime as ort

    two_outputs(tmp_path / "m.onnx")
    x = np.random.default_rng(4).standard_normal((3, 4, 32)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=x)
    config = apply_options(SAFE, [("max-output-error", "0.02"), ("output-error", mode)])
    report = convert(tmp_path / "m.onnx", tmp_path / "m.dcnn", config, calibration=tmp_path / "cal.npz")
    convert(tmp_path / "m.dcnn", tmp_path / "back.onnx")
    original, rebuilt = (ort.InferenceSession(str(tmp_path / f)) for f in ("m.onnx", "back.onnx"))
    per_output, concat = [], []
    for sample in x:
        y0s, ys = original.run(None, {"x": sample}), rebuilt.run(None, {"x": sample})
        pairs = zip(ys, y0s, strict=True)
        per_output.append([np.linalg.norm(y - y0) / np.linalg.norm(y0) for y, y0 in pairs])
        y0, y = (np.concatenate([np.ravel(o) for o in outs]) for outs in (y0s, ys))
        concat.append(np.linalg.norm(y - y0) / np.linalg.norm(y0))
    expected = max(np.mean(per_output, axis=0)) if mode == "per-output" else np.mean(concat)
    assert 0 < report.output_error <= 0.02
    assert float(expected) == pytest.approx(report.output_error, rel=1e-3)


def test_an_unknown_output_error_mode_is_a_usage_error() -> None:
    with pytest.raises(ConvertError, match="output_error must be one of concat, per-output"):
        apply_options(SAFE, [("output-error", "sum")])


def test_a_bounded_measurement_stops_early_only_when_the_mean_exceeds_the_limit() -> None:
    from converters.compress.outputs import ModuleOutputs

    net = mlp()
    calls = []
    net.register_forward_hook(lambda *_: calls.append(1))
    outputs = ModuleOutputs(net, items(1, n=8))
    noisy = {name: p.detach().numpy() * 1.2 for name, p in net.named_parameters()}
    full = outputs.error(noisy)
    calls.clear()
    assert outputs.error(noisy, limit=full) == pytest.approx(full)  # not above: every item runs
    assert len(calls) == 8
    calls.clear()
    stopped = outputs.error(noisy, limit=full / 4)
    assert full / 4 < stopped <= full
    assert len(calls) < 8  # the largest errors come first: the mean's bound is passed early


@pytest.mark.parametrize(("smaller", "expected"), [(9999, "window"), (5000, "all")])
def test_the_refinement_stops_when_its_measurements_stop_paying(smaller: int, expected: str) -> None:
    from types import SimpleNamespace

    from converters.compress import calibrate as cal

    def option(size: int) -> cal._Option:
        tensor = SimpleNamespace(encoded=SimpleNamespace(stored_bytes=size))
        return cal._Option(tensor, 4, 0.0)  # type: ignore[arg-type]

    ladders = {f"t{i}": [option(smaller), option(10_000)] for i in range(40)}
    start = {name: ladder[1] for name, ladder in ladders.items()}
    measured = []

    def measure(choice, limit):
        measured.append(limit)
        return 0.0, 0  # every move keeps the error within the target

    chosen, _ = cal._refine(start, 0.0, ladders, measure, 0.1)
    moved = sum(o.tensor.encoded.stored_bytes == smaller for o in chosen.values())
    # a byte of 400,000 per move: the window passes with nothing to show, and the moves stop;
    # half a tensor per move: every move is measured
    assert len(measured) == moved == (cal.REFINE_WINDOW if expected == "window" else 40)
    assert measured == [0.1] * len(measured)  # measured against the target: may stop early
