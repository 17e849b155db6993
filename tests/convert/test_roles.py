"""A tensor's role comes from the operator or module that uses it: biases, norms, scales and
zero points stay exact even when their shape looks like a weight's."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from converters import SAFE, convert, save_module
from converters.formats.onnx_model import read_onnx
from converters.formats.pytorch import module_uses


def lstm_model(path) -> None:
    """An LSTM with a (1, 1024) bias, and a MatMul followed by an Add of a (1, 1024) bias."""
    rng = np.random.default_rng(0)
    hidden, inputs = 128, 32
    inits = {
        "W": rng.standard_normal((1, 4 * hidden, inputs)).astype(np.float32),
        "R": rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32),
        "B": rng.standard_normal((1, 8 * hidden)).astype(np.float32),
        "proj": rng.standard_normal((hidden, 1024)).astype(np.float32),
        "proj_bias": rng.standard_normal((1, 1024)).astype(np.float32),
        "scale": np.full((64, 32), 0.01, np.float32),
    }
    nodes = [
        helper.make_node("LSTM", ["x", "W", "R", "B"], ["y", "", ""], hidden_size=hidden),
        helper.make_node("Squeeze", ["y"], ["h"]),
        helper.make_node("MatMul", ["h", "proj"], ["p"]),
        helper.make_node("Add", ["p", "proj_bias"], ["out"]),
        helper.make_node("DequantizeLinear", ["q", "scale"], ["dq"], axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, inputs]),
            helper.make_tensor_value_info("q", TensorProto.INT8, [64, 32]),
        ],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("dq", TensorProto.FLOAT, None),
        ],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_onnx_roles_come_from_the_consuming_operator_input(tmp_path) -> None:
    lstm_model(tmp_path / "m.onnx")
    roles = {w.name: (w.role, w.layer) for w in read_onnx(tmp_path / "m.onnx").weights()}
    assert roles == {
        "W": ("weight", "fc"),
        "R": ("weight", "fc"),
        "B": ("bias", None),
        "proj": ("weight", "fc"),
        "proj_bias": ("bias", None),
        "scale": ("scale", None),
    }
    report = convert(tmp_path / "m.onnx", tmp_path / "m.dcnn", SAFE)
    encodings = {info.name: info.encoding for info in report.tensors}
    assert encodings["W"] == encodings["proj"] == "DENSE_CODES"
    assert encodings["B"] == encodings["proj_bias"] == "RAW_NARROW"  # float16, not coded
    assert all(0 < report.errors[name] <= 2**-11 for name in ("B", "proj_bias"))
    assert encodings["scale"] == "RAW" and report.errors["scale"] == 0.0  # a quantization scale: exact


def test_module_roles_keep_norms_and_biases_exact(tmp_path) -> None:
    net = nn.Sequential(nn.Linear(64, 64), nn.LayerNorm([32, 64]), nn.Embedding(100, 32), nn.LSTM(32, 64))
    uses = module_uses(net)
    assert uses["0.weight"] == ("weight", "fc") and uses["0.bias"] == ("bias", None)
    assert uses["1.weight"] == ("norm", None) and uses["2.weight"] == ("embedding", "fc")
    assert uses["3.weight_ih_l0"] == ("weight", "fc") and uses["3.bias_hh_l0"] == ("bias", None)
    with torch.no_grad():
        net[1].weight.normal_()
    report = save_module(net, tmp_path / "m.dcnn")
    encodings = {info.name: info.encoding for info in report.tensors}
    assert encodings["1.weight"] == "RAW_NARROW"  # a 32x64 norm scale: rank 2, but a norm (float16)
    assert encodings["0.weight"] == encodings["2.weight"] == "DENSE_CODES"


def test_a_quantized_operators_float_bias_stays_exact(tmp_path) -> None:
    """DynamicQuantizeMatMul requantizes its input as it runs: its float bias is not even
    narrowed to float16, where a float operator's bias is."""
    rng = np.random.default_rng(1)
    inits = {
        "wq": rng.integers(-127, 127, (64, 64)).astype(np.int8),
        "wscale": np.array([0.02], np.float32),
        "wzero": np.array([0], np.int8),
        "qbias": rng.standard_normal(64).astype(np.float32),
        "fbias": rng.standard_normal(64).astype(np.float32),
    }
    nodes = [
        helper.make_node(
            "DynamicQuantizeMatMul", ["x", "wq", "wscale", "wzero", "qbias"], ["y"], domain="com.microsoft"
        ),
        helper.make_node("Add", ["y", "fbias"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    onnx.save(model, tmp_path / "q.onnx")
    roles = {w.name: w.role for w in read_onnx(tmp_path / "q.onnx").weights()}
    assert roles["qbias"] == "quantized_bias" and roles["wscale"] == "scale"
    report = convert(tmp_path / "q.onnx", tmp_path / "q.dcnn", SAFE)
    encodings = {info.name: info.encoding for info in report.tensors}
    assert encodings["qbias"] == encodings["wscale"] == encodings["wq"] == "RAW"
    assert encodings["fbias"] == "RAW_NARROW"
