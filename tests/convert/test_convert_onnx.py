"""ONNX to .dcnn and back: weights from initializers, Constant nodes and subgraphs, external
data; the rebuilt model passes the checker and runs in onnxruntime."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import dcformat
from converters.compress.config import PAPER, SAFE, apply_options
from converters.conversion import convert
from converters.errors import ConvertError
from converters.formats.onnx_model import read_onnx


@pytest.fixture
def rng() -> np.random.Generator:
    """Fresh random data for each test, whatever the order the tests run in."""
    return np.random.default_rng(0)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.conv2 = nn.Conv2d(32, 16, 3)
        self.fc1 = nn.Linear(16 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_exported_cnn_round_trip_runs_like_the_compressed_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = SmallCNN().eval()
    x = torch.randn(5, 3, 12, 12)
    src = tmp_path / "cnn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(src), input_names=["x"], output_names=["y"], dynamo=False)
    dcnn, back = tmp_path / "cnn.dcnn", tmp_path / "back.onnx"
    report = convert(src, dcnn, apply_options(PAPER, min_size=64))
    convert(dcnn, back)

    onnx.checker.check_model(onnx.load(str(back)), full_check=True)
    bits = {row.name: row.weight_bits for row in report.tensors if row.encoding != "RAW"}
    assert bits == {"conv1.weight": 8, "conv2.weight": 8, "fc1.weight": 5, "fc2.weight": 5}
    decoded = dcformat.load_file(dcnn, framework="torch")
    net.load_state_dict(decoded)  # same names as the state_dict
    with torch.no_grad():
        expected = net(x).numpy()
    (got,) = run(back, {"x": x.numpy()})
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    (original,) = run(src, {"x": x.numpy()})
    assert not np.allclose(got, original, atol=1e-6)  # it really is the compressed model
    assert np.abs(got - original).max() < 0.1 * np.abs(original).max()


def const_node(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name=""))


def control_flow_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """y = If(cond, X @ (A + B), X @ C) @ D; A: then-branch initializer, B: then-branch
    Constant, C: else-branch initializer, D: main-graph Constant; a small shape Constant too."""
    rng = np.random.default_rng(1)
    w = {k: rng.normal(size=(32, 32)).astype(np.float32) for k in "ABCD"}
    then_graph = helper.make_graph(
        [
            const_node("B", w["B"]),
            helper.make_node("Add", ["A", "B"], ["AB"]),
            helper.make_node("MatMul", ["X", "AB"], ["t"]),
        ],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [4, 32])],
        [numpy_helper.from_array(w["A"], "A")],
    )
    else_graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "C"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [4, 32])],
        [numpy_helper.from_array(w["C"], "C")],
    )
    graph = helper.make_graph(
        [
            const_node("D", w["D"]),
            const_node("shape", np.array([4, 32], dtype=np.int64)),
            helper.make_node("If", ["cond"], ["h"], then_branch=then_graph, else_branch=else_graph),
            helper.make_node("MatMul", ["h", "D"], ["m"]),
            helper.make_node("Reshape", ["m", "shape"], ["y"]),
        ],
        "main",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 32]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model, w


@pytest.mark.parametrize("external", [False, True])
def test_weights_in_subgraphs_and_constants_round_trip(
    tmp_path: Path, external: bool, rng: np.random.Generator
) -> None:
    model, w = control_flow_model()
    src = tmp_path / "cf.onnx"
    onnx.save_model(model, str(src), save_as_external_data=external, location="cf.weights", size_threshold=0)
    dcnn, back = tmp_path / "cf.dcnn", tmp_path / "out" / "back.onnx"
    back.parent.mkdir()
    convert(src, dcnn, apply_options(SAFE, [("bits", "5")], min_size=64))
    with dcformat.safe_open(dcnn) as f:
        assert sorted(f.keys()) == ["A", "B", "C", "D"]  # the 2-element shape Constant stays in the graph
        assert all(f.info(name).encoding == "DENSE_CODES" for name in f.keys())
        skeleton = onnx.ModelProto.FromString(f.source().skeleton)
    assert skeleton.ByteSize() < 4096  # the graph without its weights
    convert(dcnn, back, external_data=external)
    assert (back.parent / "back.onnx.data").exists() == external
    rebuilt = onnx.load(str(back))
    onnx.checker.check_model(str(back), full_check=True)
    decoded = dcformat.load_file(dcnn)
    x = rng.normal(size=(4, 32)).astype(np.float32)
    for cond, path in ((True, decoded["A"] + decoded["B"]), (False, decoded["C"])):
        (y,) = run(back, {"X": x, "cond": np.array(cond)})
        np.testing.assert_allclose(y, x @ path @ decoded["D"], rtol=1e-4, atol=1e-4)
        (y0,) = run(src, {"X": x, "cond": np.array(cond)})
        reference = x @ (w["A"] + w["B"] if cond else w["C"]) @ w["D"]
        np.testing.assert_allclose(y0, reference, rtol=1e-4, atol=1e-3)
    assert rebuilt.graph.node[1].attribute[0].t.raw_data == np.array([4, 32], np.int64).tobytes()


def test_operators_tell_conv_from_fc(tmp_path: Path, rng: np.random.Generator) -> None:
    """A rank-3 MatMul weight is fully connected (5 bits with --paper), a Conv kernel 8 bits."""
    batched = rng.normal(size=(2, 32, 32)).astype(np.float32)
    kernel = rng.normal(size=(16, 8, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "Wb"], ["y"]), helper.make_node("Conv", ["I", "K"], ["z"])],
        "g",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 4, 32]),
            helper.make_tensor_value_info("I", TensorProto.FLOAT, [1, 8, 8, 8]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 32]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 16, 6, 6]),
        ],
        [numpy_helper.from_array(batched, "Wb"), numpy_helper.from_array(kernel, "K")],
    )
    src = tmp_path / "k.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    kinds = {w.name: w.layer for w in read_onnx(src).weights()}
    assert kinds == {"Wb": "fc", "K": "conv"}
    report = convert(src, tmp_path / "k.dcnn", apply_options(PAPER, min_size=64))
    assert {row.name: row.weight_bits for row in report.tensors} == {"Wb": 5, "K": 8}


def test_typed_fields_and_half_precision_are_read_exactly(tmp_path: Path, rng: np.random.Generator) -> None:
    half = rng.normal(size=(40, 40)).astype(np.float16)
    ints = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["H"], ["h"]), helper.make_node("Identity", ["I"], ["i"])],
        "g",
        [],
        [
            helper.make_tensor_value_info("h", TensorProto.FLOAT16, [40, 40]),
            helper.make_tensor_value_info("i", TensorProto.INT32, [3, 4]),
        ],
        [
            helper.make_tensor("H", TensorProto.FLOAT16, [40, 40], half.ravel()),
            helper.make_tensor("I", TensorProto.INT32, [3, 4], ints.ravel().tolist()),
        ],
    )
    src = tmp_path / "t.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    assert not onnx.load(str(src)).graph.initializer[0].HasField("raw_data")
    dcnn, back = tmp_path / "t.dcnn", tmp_path / "back.onnx"
    convert(src, dcnn, apply_options(SAFE, [("exclude", "*")]))
    convert(dcnn, back)
    h, i = run(back, {})
    assert h.dtype == np.float16 and np.array_equal(h.view(np.uint16), half.view(np.uint16))
    assert np.array_equal(i, ints)


def test_only_onnx_sources_become_onnx(tmp_path: Path) -> None:
    dcnn = tmp_path / "m.dcnn"
    dcformat.save_file({"w": np.ones((2, 2), np.float32)}, dcnn)
    with pytest.raises(ConvertError, match=r"only a \.dcnn made from ONNX"):
        convert(dcnn, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("data", [b"", b"\x08\x07garbage\xff\xff", b"\x12\x05hello" * 3])
def test_broken_onnx_files(tmp_path: Path, data: bytes) -> None:
    src = tmp_path / "bad.onnx"
    src.write_bytes(data)
    with pytest.raises(ConvertError):
        convert(src, tmp_path / "bad.dcnn")
    assert not (tmp_path / "bad.dcnn").exists()


def test_missing_external_data(tmp_path: Path) -> None:
    model, _ = control_flow_model()
    src = tmp_path / "cf.onnx"
    onnx.save_model(model, str(src), save_as_external_data=True, location="cf.weights", size_threshold=0)
    (tmp_path / "cf.weights").unlink()
    with pytest.raises(ConvertError, match="cannot load as an ONNX model"):
        convert(src, tmp_path / "cf.dcnn")


def cut_raw_data(tensor: onnx.TensorProto) -> None:
    tensor.raw_data = tensor.raw_data[:-2]


def grow_dims(tensor: onnx.TensorProto) -> None:
    tensor.dims[0] += 1


@pytest.mark.parametrize(
    ("where", "edit", "name"),
    [
        (lambda m: m.graph.node[2].attribute[0].g.initializer[0], cut_raw_data, "C"),  # else-branch
        (lambda m: m.graph.node[0].attribute[0].t, grow_dims, "D"),  # a Constant's value
    ],
)
def test_tensor_data_that_does_not_fit_its_shape(tmp_path: Path, where, edit, name: str) -> None:
    model, _ = control_flow_model()
    edit(where(model))
    src = tmp_path / "bad.onnx"
    onnx.save_model(model, str(src))
    with pytest.raises(ConvertError, match=f"'{name}': its data does not fit its shape"):
        convert(src, tmp_path / "bad.dcnn")


def big_mlp(rng: np.random.Generator) -> onnx.ModelProto:
    """Two MatMuls with weights large enough to be compressed."""
    w1 = numpy_helper.from_array(rng.standard_normal((64, 128)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((128, 32)).astype(np.float32), "w2")
    b = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
        [w1, w2, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_external_data_is_read_per_tensor_when_compressed(tmp_path: Path, rng: np.random.Generator) -> None:
    model = big_mlp(rng)
    inside, outside = tmp_path / "inside.onnx", tmp_path / "ext" / "outside.onnx"
    onnx.save_model(model, str(inside))
    outside.parent.mkdir()
    onnx.save_model(model, str(outside), save_as_external_data=True, location="w.bin", size_threshold=0)
    opened = read_onnx(outside)
    assert opened.nbytes == 4 * (64 * 128 + 128 * 32 + 32)
    assert all(task.outline().array.strides == (0,) * task.outline().array.ndim for task in opened.tasks())
    convert(inside, tmp_path / "inside.dcnn")
    for workers in (1, 2):  # the same file from weights in the graph or outside it, however many workers
        convert(outside, tmp_path / f"outside{workers}.dcnn", workers=workers)
        assert (tmp_path / f"outside{workers}.dcnn").read_bytes() == (tmp_path / "inside.dcnn").read_bytes()
    convert(tmp_path / "outside1.dcnn", tmp_path / "back.onnx")
    x = rng.standard_normal((1, 64)).astype(np.float32)
    ours, theirs = run(tmp_path / "back.onnx", {"x": x})[0], run(inside, {"x": x})[0]
    assert np.abs(ours - theirs).max() < 0.05 * np.abs(theirs).max()


@pytest.mark.parametrize(
    ("location", "match"),
    [("../w.bin", "not a file in the model's folder"), ("gone.bin", "missing or shorter")],
)
def test_external_data_references_are_checked_when_opened(
    tmp_path: Path, rng: np.random.Generator, location: str, match: str
) -> None:
    model = big_mlp(rng)
    folder = tmp_path / "m"
    folder.mkdir()
    src = folder / "m.onnx"
    onnx.save_model(model, str(src), save_as_external_data=True, location="w.bin", size_threshold=0)
    edited = onnx.load(str(src), load_external_data=False)
    (tmp_path / "w.bin").write_bytes((folder / "w.bin").read_bytes())  # a copy outside the folder
    for entry in edited.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save_model(edited, str(src))
    with pytest.raises(ConvertError, match=match):
        convert(src, tmp_path / "m.dcnn")
    assert not (tmp_path / "m.dcnn").exists()
