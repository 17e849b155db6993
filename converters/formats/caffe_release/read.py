"""Read a Deep Compression release (``.net`` + deploy prototxt) as already-encoded weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import dcformat
from dcformat import Source

from ...errors import ConvertError
from ...weight import Weight
from ..base import Format, ModelInput, check_input
from .prototxt import parse
from .release import CaffeImportError, ReleaseTensor, dense_codes, read_release
from .shapes import release_layers

NEGATIVE_ZERO = np.uint32(0x80000000)


def _sparse_is_exact(codebook: np.ndarray, codes: np.ndarray) -> bool:
    """SPARSE needs codebook[0] == +0.0; and dcformat's reader turns a -0.0 entry into +0.0."""
    bits = codebook.view(np.uint32)
    return bits[0] == 0 and not np.any(bits[codes] == NEGATIVE_ZERO)


def lossless_weight(tensor: ReleaseTensor) -> Weight:
    """A layer's weight with its exact encodings: raw float32, dense codes, and sparse codes
    (fillers dropped, dcformat inserts its own) where those decode exactly."""
    shape = tensor.layer.weight_shape
    all_codes = dense_codes(tensor)
    decoded = tensor.codebook[all_codes].reshape(shape)
    options: list[dcformat.Quantized | dcformat.Raw] = [
        dcformat.Raw(decoded),
        dcformat.Quantized(tensor.codebook, all_codes, shape),
    ]
    real = tensor.codes != 0
    if _sparse_is_exact(tensor.codebook, tensor.codes[real]):
        options.append(
            dcformat.Quantized(tensor.codebook, tensor.codes[real], shape, positions=tensor.positions[real])
        )
    return Weight(f"{tensor.layer.name}.weight", decoded, "float32", encodings=tuple(options))


def read_net(path: Path, prototxt: Path | None = None, **_: Any) -> ModelInput:
    """A release file's weights (``<layer>.weight``, ``<layer>.bias``), decoding bit for bit
    to what the release decoder produces; the prototxt is kept as the source skeleton."""
    if prototxt is None:
        raise ConvertError("a .net release file needs its deploy prototxt (--prototxt)", rule="usage")
    check_input(path)
    prototxt = Path(prototxt)
    check_input(prototxt)
    layers = release_layers(parse(prototxt.read_text(), str(prototxt)))
    try:
        release = read_release(path.read_bytes(), layers)
    except CaffeImportError as e:
        raise CaffeImportError(f"{path}: {e}") from None
    weights: list[Weight] = []
    for t in release:
        weights.append(lossless_weight(t))
        weights.append(Weight(f"{t.layer.name}.bias", t.bias, "float32", encodings=(dcformat.Raw(t.bias),)))
    source = Source("caffe-release", prototxt.read_bytes(), {"net_bytes": str(path.stat().st_size)})
    return ModelInput(lambda: iter(weights), sum(w.array.nbytes for w in weights), {}, source, lossless=True)


FORMAT = Format("caffe-release", (".net",), read=read_net)
