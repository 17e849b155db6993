"""Shape inference over Caffe deploy nets, checked against shapes Caffe reports."""

import pytest

from converters.formats.caffe_release.prototxt import parse
from converters.formats.caffe_release.release import CaffeImportError, ReleaseLayer
from converters.formats.caffe_release.shapes import infer_shapes, release_layers


def _layer(name: str, ltype: str, bottoms: str, top: str, body: str = "") -> str:
    bottom_lines = "".join(f' bottom: "{b}"' for b in bottoms.split())
    return f'layer {{ name: "{name}" type: "{ltype}"{bottom_lines} top: "{top}" {body} }}\n'


def _conv(name: str, bottom: str, body: str) -> str:
    return _layer(name, "Convolution", bottom, name, f"convolution_param {{ {body} }}")


def _pool(name: str, bottom: str, body: str) -> str:
    return _layer(name, "Pooling", bottom, name, f"pooling_param {{ {body} }}")


def _fc(name: str, bottom: str, n: int) -> str:
    return _layer(name, "InnerProduct", bottom, name, f"inner_product_param {{ num_output: {n} }}")


def _relu(blob: str) -> str:
    return _layer(f"relu_{blob}", "ReLU", blob, blob)


# BVLC AlexNet deploy, in the release's input_dim form.
ALEXNET = (
    'name: "AlexNet"\ninput: "data"\ninput_dim: 10\ninput_dim: 3\ninput_dim: 227\ninput_dim: 227\n'
    + _conv("conv1", "data", "num_output: 96 kernel_size: 11 stride: 4")
    + _relu("conv1")
    + _layer("norm1", "LRN", "conv1", "norm1", "lrn_param { local_size: 5 alpha: 0.0001 }")
    + _pool("pool1", "norm1", "pool: MAX kernel_size: 3 stride: 2")
    + _conv("conv2", "pool1", "num_output: 256 pad: 2 kernel_size: 5 group: 2")
    + _relu("conv2")
    + _layer("norm2", "LRN", "conv2", "norm2")
    + _pool("pool2", "norm2", "pool: MAX kernel_size: 3 stride: 2")
    + _conv("conv3", "pool2", "num_output: 384 pad: 1 kernel_size: 3")
    + _relu("conv3")
    + _conv("conv4", "conv3", "num_output: 384 pad: 1 kernel_size: 3 group: 2")
    + _relu("conv4")
    + _conv("conv5", "conv4", "num_output: 256 pad: 1 kernel_size: 3 group: 2")
    + _relu("conv5")
    + _pool("pool5", "conv5", "pool: MAX kernel_size: 3 stride: 2")
    + _fc("fc6", "pool5", 4096)
    + _relu("fc6")
    + _layer("drop6", "Dropout", "fc6", "fc6", "dropout_param { dropout_ratio: 0.5 }")
    + _fc("fc7", "fc6", 4096)
    + _relu("fc7")
    + _layer("drop7", "Dropout", "fc7", "fc7")
    + _fc("fc8", "fc7", 1000)
    + _layer("prob", "Softmax", "fc8", "prob")
)

# SqueezeNet v1.0 head + one fire module (release naming), input_shape form.
SQUEEZENET_FIRE = (
    'input: "data" input_shape { dim: 1 dim: 3 dim: 227 dim: 227 }\n'
    + _conv("conv1", "data", "num_output: 96 kernel_size: 7 stride: 2")
    + _relu("conv1")
    + _pool("pool1", "conv1", "pool: MAX kernel_size: 3 stride: 2")
    + _conv("fire2/conv1x1_1", "pool1", "num_output: 16 kernel_size: 1")
    + _relu("fire2/conv1x1_1")
    + _conv("fire2/conv1x1_2", "fire2/conv1x1_1", "num_output: 64 kernel_size: 1")
    + _conv("fire2/conv3x3_2", "fire2/conv1x1_1", "num_output: 64 pad: 1 kernel_size: 3")
    + _layer("fire2/concat", "Concat", "fire2/conv1x1_2 fire2/conv3x3_2", "fire2/concat")
    + _layer("drop9", "Dropout", "fire2/concat", "fire2/concat")
    + _conv("conv_final", "fire2/concat", "num_output: 1000 pad: 1 kernel_size: 1")
    + _pool("pool_final", "conv_final", "pool: AVE global_pooling: true")
    + _layer("prob", "Softmax", "pool_final", "prob")
)


def test_alexnet_shapes() -> None:
    shapes = infer_shapes(parse(ALEXNET))
    assert shapes.params == {
        "conv1": ((96, 3, 11, 11), (96,)),
        "conv2": ((256, 48, 5, 5), (256,)),
        "conv3": ((384, 256, 3, 3), (384,)),
        "conv4": ((384, 192, 3, 3), (384,)),
        "conv5": ((256, 192, 3, 3), (256,)),
        "fc6": ((4096, 9216), (4096,)),
        "fc7": ((4096, 4096), (4096,)),
        "fc8": ((1000, 4096), (1000,)),
    }
    blobs = shapes.blobs
    assert blobs["conv1"] == blobs["norm1"] == (10, 96, 55, 55)
    assert blobs["pool1"] == (10, 96, 27, 27)
    assert blobs["pool2"] == (10, 256, 13, 13)
    assert blobs["pool5"] == (10, 256, 6, 6)
    assert blobs["fc6"] == (10, 4096)
    assert blobs["prob"] == (10, 1000)


def test_squeezenet_fire_module_shapes() -> None:
    shapes = infer_shapes(parse(SQUEEZENET_FIRE))
    assert shapes.blobs["conv1"] == (1, 96, 111, 111)
    assert shapes.blobs["pool1"] == (1, 96, 55, 55)
    assert shapes.blobs["fire2/concat"] == (1, 128, 55, 55)
    assert shapes.blobs["conv_final"] == (1, 1000, 57, 57)  # pad 1 on a 1x1 kernel
    assert shapes.blobs["pool_final"] == shapes.blobs["prob"] == (1, 1000, 1, 1)
    assert shapes.params["fire2/conv1x1_1"] == ((16, 96, 1, 1), (16,))
    assert shapes.params["fire2/conv3x3_2"] == ((64, 16, 3, 3), (64,))
    assert shapes.params["conv_final"] == ((1000, 128, 1, 1), (1000,))


def _pool_out(h: int, w: int, body: str) -> tuple[int, ...]:
    net = f'input: "x" input_shape {{ dim: 1 dim: 2 dim: {h} dim: {w} }}\n' + _pool("p", "x", body)
    return infer_shapes(parse(net)).blobs["p"]


@pytest.mark.parametrize(
    ("size", "body", "expected"),
    [
        (112, "kernel_size: 3 stride: 2", 56),  # GoogLeNet pool1: ceil, floor would give 55
        (112, "kernel_size: 3 stride: 2 round_mode: FLOOR", 55),
        (56, "kernel_size: 3 stride: 2", 28),
        (14, "kernel_size: 3 stride: 2", 7),
        (5, "kernel_size: 2 stride: 2 pad: 1", 3),  # ceil gives 4; last window would start in pad
        (6, "kernel_size: 3 stride: 2 pad: 1", 4),  # last window starts inside: kept
        (7, "kernel_size: 7 stride: 1", 1),
        (13, "kernel_size: 3", 11),  # stride defaults to 1
    ],
)
def test_pooling_output_size(size: int, body: str, expected: int) -> None:
    assert _pool_out(size, size, body) == (1, 2, expected, expected)


def test_pooling_hw_forms_and_global() -> None:
    body = "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0"
    assert _pool_out(9, 9, body) == (1, 2, 5, 8)
    assert _pool_out(9, 6, "pool: AVE global_pooling: true") == (1, 2, 1, 1)


def _conv_net(body: str, dims: str = "1 4 10 7") -> str:
    dim_text = " ".join(f"dim: {d}" for d in dims.split())
    return f'input: "x" input_shape {{ {dim_text} }}\n' + _conv("conv", "x", body)


@pytest.mark.parametrize(
    ("body", "weight", "out"),
    [
        ("num_output: 6 kernel_size: 3", (6, 4, 3, 3), (8, 5)),
        ("num_output: 6 kernel_size: 3 kernel_size: 1", (6, 4, 3, 1), (8, 7)),
        (
            "num_output: 6 kernel_h: 3 kernel_w: 1 pad_h: 1 pad_w: 0 stride_h: 2 stride_w: 1",
            (6, 4, 3, 1),
            (5, 7),
        ),
        ("num_output: 6 kernel_size: 3 stride: 2 stride: 3 pad: 1", (6, 4, 3, 3), (5, 3)),
        ("num_output: 6 kernel_size: 3 dilation: 2", (6, 4, 3, 3), (6, 3)),
        ("num_output: 6 kernel_size: 1 group: 2", (6, 2, 1, 1), (10, 7)),
        ("num_output: 4 kernel_size: 1 group: 4", (4, 1, 1, 1), (10, 7)),
    ],
)
def test_convolution_shapes(body: str, weight: tuple, out: tuple) -> None:
    shapes = infer_shapes(parse(_conv_net(body)))
    assert shapes.params["conv"] == (weight, (weight[0],))
    assert shapes.blobs["conv"] == (1, weight[0], *out)


def test_bias_term_false_has_weight_only() -> None:
    shapes = infer_shapes(parse(_conv_net("num_output: 3 kernel_size: 1 bias_term: false")))
    assert shapes.params["conv"] == ((3, 4, 1, 1),)


def test_input_layer_inner_product_axis_and_transpose() -> None:
    net = (
        'layer { name: "in" type: "Input" top: "a" top: "b"'
        " input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } shape { dim: 2 dim: 784 } } }\n"
        + _layer("ip_axis", "InnerProduct", "a", "ip_axis",
                 "inner_product_param { num_output: 7 axis: 2 }")
        + _layer("ip_t", "InnerProduct", "b", "ip_t",
                 "inner_product_param { num_output: 10 transpose: true bias_term: false }")
        + _fc("ip_neg", "a", 8).replace("num_output: 8", "num_output: 8 axis: -1")
    )  # fmt: skip
    shapes = infer_shapes(parse(net))
    assert shapes.blobs["a"] == (2, 3, 4, 5) and shapes.blobs["b"] == (2, 784)
    assert shapes.params["ip_axis"] == ((7, 20), (7,))
    assert shapes.blobs["ip_axis"] == (2, 3, 7)
    assert shapes.params["ip_t"] == ((784, 10),)
    assert shapes.params["ip_neg"] == ((8, 5), (8,))
    assert shapes.blobs["ip_neg"] == (2, 3, 4, 8)


def test_input_layer_with_one_shape_for_several_tops() -> None:
    net = 'layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 3 } } }'
    assert infer_shapes(parse(net)).blobs == {"a": (3,), "b": (3,)}


def test_legacy_layers_with_enum_types() -> None:
    net = """
    input: "data" input_dim: 1 input_dim: 1 input_dim: 28 input_dim: 28
    layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
             convolution_param { num_output: 20 kernel_size: 5 } }
    layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
             pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
    layers { name: "norm1" type: LRN bottom: "pool1" top: "pool1" }
    layers { name: "split" type: CONCAT bottom: "pool1" bottom: "pool1" top: "cat"
             concat_param { concat_dim: 1 } }
    layers { name: "sum" type: ELTWISE bottom: "cat" bottom: "cat" top: "sum" }
    layers { name: "ip1" type: INNER_PRODUCT bottom: "sum" top: "ip1"
             inner_product_param { num_output: 500 } }
    layers { name: "relu1" type: RELU bottom: "ip1" top: "ip1" }
    layers { name: "drop1" type: DROPOUT bottom: "ip1" top: "ip1" }
    layers { name: "ip2" type: INNER_PRODUCT bottom: "ip1" top: "ip2"
             inner_product_param { num_output: 10 } }
    layers { name: "prob" type: SOFTMAX bottom: "ip2" top: "prob" }
    """
    shapes = infer_shapes(parse(net))
    assert shapes.blobs["pool1"] == (1, 20, 12, 12)
    assert shapes.blobs["cat"] == shapes.blobs["sum"] == (1, 40, 12, 12)
    assert shapes.params == {
        "conv1": ((20, 1, 5, 5), (20,)),
        "ip1": ((500, 5760), (500,)),
        "ip2": ((10, 500), (10,)),
    }
    assert shapes.blobs["prob"] == (1, 10)


def test_concat_on_other_axis() -> None:
    inputs = 'input: "a" input: "b" input_shape { dim: 2 dim: 3 } input_shape { dim: 2 dim: 5 }\n'
    net = inputs + _layer("cat", "Concat", "a b", "cat", "concat_param { axis: -1 }")
    assert infer_shapes(parse(net)).blobs["cat"] == (2, 8)


def test_release_layers_select_by_name() -> None:
    assert release_layers(parse(ALEXNET)) == [
        ReleaseLayer("conv1", (96, 3, 11, 11), 96),
        ReleaseLayer("conv2", (256, 48, 5, 5), 256),
        ReleaseLayer("conv3", (384, 256, 3, 3), 384),
        ReleaseLayer("conv4", (384, 192, 3, 3), 384),
        ReleaseLayer("conv5", (256, 192, 3, 3), 256),
        ReleaseLayer("fc6", (4096, 9216), 4096),
        ReleaseLayer("fc7", (4096, 4096), 4096),
        ReleaseLayer("fc8", (1000, 4096), 1000),
    ]
    assert [layer.bits for layer in release_layers(parse(ALEXNET))] == [8] * 5 + [4] * 3
    fire = release_layers(parse(SQUEEZENET_FIRE))
    assert [layer.name for layer in fire] == [
        "conv1", "fire2/conv1x1_1", "fire2/conv1x1_2", "fire2/conv3x3_2", "conv_final"
    ]  # fmt: skip
    assert {layer.bits for layer in fire} == {8}


def test_release_layers_skip_unmatched_names_and_need_a_bias() -> None:
    base = 'input: "x" input_shape { dim: 1 dim: 4 dim: 8 dim: 8 }\n'
    net = base + _conv("squeeze", "x", "num_output: 2 kernel_size: 1 bias_term: false")
    net += _fc("ip1", "squeeze", 3) + _fc("classifier", "ip1", 2)
    assert release_layers(parse(net)) == [ReleaseLayer("ip1", (3, 128), 3)]
    no_bias = base + _conv("conv1", "x", "num_output: 2 kernel_size: 1 bias_term: false")
    with pytest.raises(CaffeImportError, match="layer 'conv1': the release format needs a bias"):
        release_layers(parse(no_bias))


BASE = 'input: "x" input_shape { dim: 1 dim: 4 dim: 8 dim: 8 }\n'


@pytest.mark.parametrize(
    ("net", "message"),
    [
        (
            BASE + _layer("bn1", "BatchNorm", "x", "bn1"),
            r"layer 'bn1' \(type 'BatchNorm'\): unsupported layer type",
        ),
        (
            'input: "x" input_dim: 1 input_dim: 1 input_dim: 2 input_dim: 2\n'
            'layers { name: "data" type: DATA top: "x" }',
            r"layer 'data' \(type 'DATA'\): unsupported layer type",
        ),
        (
            BASE + _relu("y"),
            r"layer 'relu_y' \(type 'ReLU'\): bottom 'y' is produced by no earlier layer",
        ),
        (
            BASE + _conv("conv", "x", "num_output: 6 kernel_size: 1 group: 3"),
            r"layer 'conv' \(type 'Convolution'\): group 3 does not divide input channels 4",
        ),
        (
            BASE + _conv("conv", "x", "num_output: 6 kernel_size: 5 dilation: 2"),
            r"layer 'conv' .*: kernel extent 9 exceeds padded input 8",
        ),
        (BASE + _conv("conv", "x", "num_output: 6"), r"layer 'conv' .*: kernel_size is missing"),
        (
            BASE + _conv("conv", "x", "num_output: 6 kernel_size: 3 kernel_h: 3 kernel_w: 3"),
            r"give either kernel_size or both kernel_h and kernel_w",
        ),
        (
            BASE + _conv("conv", "x", "num_output: 6 kernel_size: 1 kernel_size: 2 kernel_size: 3"),
            r"kernel_size needs 1 or 2 values",
        ),
        (BASE + _conv("conv", "x", "kernel_size: 1"), r"num_output must be an integer >= 1"),
        (
            BASE + _conv("conv", "x", "num_output: 2 kernel_size: 1 stride: 1 stride: 0"),
            r"stride must be an integer >= 1, got 0",
        ),
        (BASE + _pool("p", "x", "kernel_size: 2 pad: 2"), r"pad \(2, 2\) must be smaller"),
        (
            BASE + _pool("p", "x", "global_pooling: true kernel_size: 2"),
            r"layer 'p' .*: global_pooling takes no kernel size",
        ),
        (
            BASE + _pool("p", "x", "kernel_size: 2 round_mode: UP"),
            r"unknown round_mode 'UP'",
        ),
        (
            BASE + _fc("fc", "x", 2) + _pool("p", "fc", "kernel_size: 1"),
            r"layer 'p' \(type 'Pooling'\): needs a 4-D \(N, C, H, W\) bottom, got \(1, 2\)",
        ),
        (
            BASE + _fc("fc", "x", 2) + _layer("sum", "Eltwise", "x fc", "sum"),
            r"layer 'sum' .*: needs two or more bottoms of one shape",
        ),
        (
            BASE + _fc("fc", "x", 2) + _layer("cat", "Concat", "x fc", "cat"),
            r"layer 'cat' .*: bottoms .* differ outside axis 1",
        ),
        (BASE + _layer("r", "ReLU", "x x", "r"), r"layer 'r' .*: takes one bottom, got 2"),
        (
            BASE + 'layer { name: "r" type: "ReLU" bottom: "x" top: "a" top: "b" }',
            r"layer 'r' .*: needs one top, got 2",
        ),
        (
            BASE + _fc("fc", "x", 2) + _fc("fc", "x", 2),
            r"layer 'fc' .*: a layer with parameters of this name came earlier",
        ),
        (
            BASE + 'layer { type: "ReLU" bottom: "nope" top: "r" }',
            r"layer #0 \(type 'ReLU'\): bottom 'nope'",
        ),
        (
            'input: "x" input_dim: 1 input_dim: 3 input_dim: 8',
            r"1 inputs need 4 input_dim values",
        ),
        (
            'input: "x" input: "y" input_shape { dim: 1 }',
            r"2 inputs but 1 input_shape blocks",
        ),
        ('input: "x" input_shape { }', r"input 'x' has no dims"),
        (
            BASE + 'layers { name: "r" type: RELU bottom: "x" top: "x" }' + _relu("x"),
            r"mixes 'layer' and legacy 'layers'",
        ),
        (
            'layer { name: "in" type: "Input" top: "a" top: "b" top: "c"'
            " input_param { shape { dim: 1 } shape { dim: 2 } } }",
            r"layer 'in' \(type 'Input'\): 3 tops but 2 input_param shapes",
        ),
    ],
)
def test_errors_name_the_layer(net: str, message: str) -> None:
    with pytest.raises(CaffeImportError, match=message):
        infer_shapes(parse(net))
