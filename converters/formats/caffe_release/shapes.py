"""Blob and parameter shapes of a Caffe deploy net, by walking it from its declared inputs.

Follows Caffe's shape rules for the layer types a Deep Compression deploy net uses:
Input, Convolution, Pooling (CEIL rounding by default, the last window must start inside
the padded input, ``global_pooling``), ReLU, LRN, Concat, Dropout, Eltwise, InnerProduct
and Softmax, in both ``layer {}`` and legacy ``layers {}`` (V1, enum type) form.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from converters.formats.caffe_release.prototxt import Message, many, one
from converters.formats.caffe_release.release import CaffeImportError, ReleaseLayer

Shape = tuple[int, ...]

LEGACY_TYPES = {
    "CONVOLUTION": "Convolution",
    "INNER_PRODUCT": "InnerProduct",
    "POOLING": "Pooling",
    "RELU": "ReLU",
    "LRN": "LRN",
    "CONCAT": "Concat",
    "DROPOUT": "Dropout",
    "ELTWISE": "Eltwise",
    "SOFTMAX": "Softmax",
}
RELEASE_NAME_KEYS = ("conv", "fc", "ip")


@dataclass(frozen=True)
class NetShapes:
    """Shapes found by ``infer_shapes``.

    ``blobs``: every blob's (last) shape; ``params``: per layer with parameters, in net
    order, its parameter blob shapes (weight, then bias when ``bias_term`` is on).
    """

    blobs: dict[str, Shape]
    params: dict[str, tuple[Shape, ...]]


def _int(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CaffeImportError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _param(layer: Message, field: str) -> Message:
    return one(layer, field, {})


def _hw(p: Message, field: str, default: int | None, minimum: int) -> tuple[int, int]:
    """``field`` (one value, or Convolution's repeated h, w) or its ``_h`` + ``_w`` forms."""
    values = many(p, field)
    prefix = field.removesuffix("_size")
    h, w = one(p, f"{prefix}_h"), one(p, f"{prefix}_w")
    if h is not None or w is not None:
        if values or h is None or w is None:
            raise CaffeImportError(f"give either {field} or both {prefix}_h and {prefix}_w")
        values = [h, w]
    elif not values:
        if default is None:
            raise CaffeImportError(f"{field} is missing")
        values = [default]
    if len(values) not in (1, 2):
        raise CaffeImportError(f"{field} needs 1 or 2 values for a 2-D layer, got {values}")
    ints = [_int(v, field, minimum) for v in values]
    return (ints[0], ints[-1])


def _axis(axis: object, ndim: int) -> int:
    a = _int(axis, "axis", -ndim)
    if a >= ndim:
        raise CaffeImportError(f"axis {a} out of range for a {ndim}-D blob")
    return a % ndim


def _four_d(shape: Shape) -> Shape:
    if len(shape) != 4:
        raise CaffeImportError(f"needs a 4-D (N, C, H, W) bottom, got {shape}")
    return shape


def _one_bottom(bottoms: list[Shape]) -> Shape:
    if len(bottoms) != 1:
        raise CaffeImportError(f"takes one bottom, got {len(bottoms)}")
    return bottoms[0]


Params = tuple[Shape, ...] | None
Handler = Callable[[Message, list[Shape]], tuple[Shape, Params]]


def _same_shape(layer: Message, bottoms: list[Shape]) -> tuple[Shape, Params]:
    return _one_bottom(bottoms), None


def _convolution(layer: Message, bottoms: list[Shape]) -> tuple[Shape, Params]:
    n, c, h, w = _four_d(_one_bottom(bottoms))
    p = _param(layer, "convolution_param")
    if _axis(one(p, "axis", 1), 4) != 1:
        raise CaffeImportError("only axis 1 (channels) is supported")
    num_output = _int(one(p, "num_output"), "num_output", 1)
    group = _int(one(p, "group", 1), "group", 1)
    if c % group or num_output % group:
        raise CaffeImportError(
            f"group {group} does not divide input channels {c} and num_output {num_output}"
        )
    kernel = _hw(p, "kernel_size", None, 1)
    stride = _hw(p, "stride", 1, 1)
    pad = _hw(p, "pad", 0, 0)
    dilation = _hw(p, "dilation", 1, 1)
    out = []
    for size, k, s, q, d in zip((h, w), kernel, stride, pad, dilation, strict=True):
        extent = d * (k - 1) + 1
        if size + 2 * q < extent:
            raise CaffeImportError(f"kernel extent {extent} exceeds padded input {size + 2 * q}")
        out.append((size + 2 * q - extent) // s + 1)
    weight = (num_output, c // group, *kernel)
    bias = ((num_output,),) if one(p, "bias_term", True) else ()
    return (n, num_output, *out), (weight, *bias)


def _pooling(layer: Message, bottoms: list[Shape]) -> tuple[Shape, Params]:
    n, c, h, w = _four_d(_one_bottom(bottoms))
    p = _param(layer, "pooling_param")
    stride = _hw(p, "stride", 1, 1)
    pad = _hw(p, "pad", 0, 0)
    if one(p, "global_pooling", False):
        kernel_given = any(f in p for f in ("kernel_size", "kernel_h", "kernel_w"))
        if kernel_given or (stride, pad) != ((1, 1), (0, 0)):
            raise CaffeImportError("global_pooling takes no kernel size, stride or pad")
        return (n, c, 1, 1), None
    kernel = _hw(p, "kernel_size", None, 1)
    if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
        raise CaffeImportError(f"pad {pad} must be smaller than kernel {kernel}")
    round_mode = one(p, "round_mode", "CEIL")
    if round_mode not in ("CEIL", "FLOOR"):
        raise CaffeImportError(f"unknown round_mode {round_mode!r}")
    out = []
    for size, k, s, q in zip((h, w), kernel, stride, pad, strict=True):
        span = size + 2 * q - k
        pooled = (-(-span // s) if round_mode == "CEIL" else span // s) + 1
        # Caffe: with padding, the last window must start inside the image or left padding.
        if any(pad) and (pooled - 1) * s >= size + q:
            pooled -= 1
        if pooled < 1:
            raise CaffeImportError(f"kernel {kernel} leaves no output for input {(h, w)}")
        out.append(pooled)
    return (n, c, *out), None


def _inner_product(layer: Message, bottoms: list[Shape]) -> tuple[Shape, Params]:
    shape = _one_bottom(bottoms)
    p = _param(layer, "inner_product_param")
    num_output = _int(one(p, "num_output"), "num_output", 1)
    axis = _axis(one(p, "axis", 1), len(shape))
    size = 1
    for d in shape[axis:]:
        size *= d
    weight = (size, num_output) if one(p, "transpose", False) else (num_output, size)
    bias = ((num_output,),) if one(p, "bias_term", True) else ()
    return (*shape[:axis], num_output), (weight, *bias)


def _concat(layer: Message, bottoms: list[Shape]) -> tuple[Shape, Params]:
    if not bottoms:
        raise CaffeImportError("takes at least one bottom")
    p = _param(layer, "concat_param")
    if "axis" in p and "concat_dim" in p:
        raise CaffeImportError("give either axis or concat_dim")
    axis = _axis(one(p, "axis", one(p, "concat_dim", 1)), len(bottoms[0]))
    first = bottoms[0]
    for b in bottoms[1:]:
        if len(b) != len(first) or b[:axis] + b[axis + 1 :] != first[:axis] + first[axis + 1 :]:
            raise CaffeImportError(f"bottoms {bottoms} differ outside axis {axis}")
    return (*first[:axis], sum(b[axis] for b in bottoms), *first[axis + 1 :]), None


def _eltwise(layer: Message, bottoms: list[Shape]) -> tuple[Shape, Params]:
    if len(bottoms) < 2 or any(b != bottoms[0] for b in bottoms):
        raise CaffeImportError(f"needs two or more bottoms of one shape, got {bottoms}")
    return bottoms[0], None


HANDLERS: dict[str, Handler] = {
    "Convolution": _convolution,
    "Pooling": _pooling,
    "InnerProduct": _inner_product,
    "Concat": _concat,
    "Eltwise": _eltwise,
    "ReLU": _same_shape,
    "LRN": _same_shape,
    "Dropout": _same_shape,
    "Softmax": _same_shape,
}


def net_layers(net: Message) -> list[Message]:
    """The net's layers, from ``layer {}`` or legacy ``layers {}`` blocks."""
    if "layer" in net and "layers" in net:
        raise CaffeImportError("the net mixes 'layer' and legacy 'layers' blocks")
    return many(net, "layer") or many(net, "layers")


def layer_type(layer: Message) -> str:
    """The layer's type string, legacy enum names mapped to their current names."""
    ltype = one(layer, "type", "")
    return LEGACY_TYPES.get(ltype, ltype)


def _dims(shape_msg: Message, what: str) -> Shape:
    dims = tuple(_int(d, f"{what} dim", 1) for d in many(shape_msg, "dim"))
    if not dims:
        raise CaffeImportError(f"{what} has no dims")
    return dims


def input_shapes(net: Message) -> dict[str, Shape]:
    """Shapes of the net-level inputs (``input`` with ``input_dim`` x4 or ``input_shape``)."""
    names = many(net, "input")
    dims = many(net, "input_dim")
    shapes = many(net, "input_shape")
    if dims and shapes:
        raise CaffeImportError("give either input_dim or input_shape, not both")
    if shapes:
        if len(shapes) != len(names):
            raise CaffeImportError(f"{len(names)} inputs but {len(shapes)} input_shape blocks")
        return {str(n): _dims(s, f"input {n!r}") for n, s in zip(names, shapes, strict=True)}
    if len(dims) != 4 * len(names):
        raise CaffeImportError(f"{len(names)} inputs need {4 * len(names)} input_dim values")
    ints = [_int(d, "input_dim", 1) for d in dims]
    return {str(n): tuple(ints[4 * i : 4 * i + 4]) for i, n in enumerate(names)}


def _input_layer(layer: Message, tops: list[str]) -> list[Shape]:
    shapes = [_dims(s, "input_param shape") for s in many(_param(layer, "input_param"), "shape")]
    if len(shapes) == 1:
        return shapes * len(tops)
    if len(shapes) != len(tops):
        raise CaffeImportError(f"{len(tops)} tops but {len(shapes)} input_param shapes")
    return shapes


def infer_shapes(net: Message) -> NetShapes:
    """Walk the net in order from its inputs; errors name the offending layer and type."""
    blobs = input_shapes(net)
    params: dict[str, tuple[Shape, ...]] = {}
    for index, layer in enumerate(net_layers(net)):
        name = one(layer, "name", "")
        ltype = layer_type(layer)
        tops = [str(t) for t in many(layer, "top")]
        try:
            if ltype == "Input":
                top_shapes = _input_layer(layer, tops)
            else:
                if ltype not in HANDLERS:
                    raise CaffeImportError("unsupported layer type")
                missing = [b for b in many(layer, "bottom") if b not in blobs]
                if missing:
                    raise CaffeImportError(f"bottom {missing[0]!r} is produced by no earlier layer")
                bottoms = [blobs[str(b)] for b in many(layer, "bottom")]
                top, param_shapes = HANDLERS[ltype](layer, bottoms)
                if len(tops) != 1:
                    raise CaffeImportError(f"needs one top, got {len(tops)}")
                top_shapes = [top]
                if param_shapes is not None:
                    if name in params:
                        raise CaffeImportError("a layer with parameters of this name came earlier")
                    params[name] = param_shapes
        except CaffeImportError as e:
            label = repr(name) if name else f"#{index}"
            raise CaffeImportError(f"layer {label} (type {ltype!r}): {e}") from None
        blobs.update(zip(tops, top_shapes, strict=True))
    return NetShapes(blobs, params)


def release_layers(net: Message) -> list[ReleaseLayer]:
    """The layers a release ``.net`` file stores, in order: those with parameters whose
    names contain ``conv``, ``fc`` or ``ip``."""
    layers = []
    for name, shapes in infer_shapes(net).params.items():
        if not any(key in name for key in RELEASE_NAME_KEYS):
            continue
        if len(shapes) != 2:
            raise CaffeImportError(f"layer {name!r}: the release format needs a bias blob")
        layers.append(ReleaseLayer(name, shapes[0], shapes[1][0]))
    return layers
