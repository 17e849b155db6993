"""Convert a Deep Compression release (``.net`` + deploy prototxt) to dcformat tensors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import dcformat
from converters.caffe.prototxt import parse
from converters.caffe.release import CaffeImportError, ReleaseTensor, dense_codes, read_release
from converters.caffe.shapes import release_layers
from converters.pipeline.encode import cheapest

NEGATIVE_ZERO = np.uint32(0x80000000)


def _sparse_is_exact(codebook: np.ndarray, codes: np.ndarray) -> bool:
    """SPARSE needs codebook[0] == +0.0; and dcformat's reader turns a -0.0 entry into +0.0."""
    bits = codebook.view(np.uint32)
    return bits[0] == 0 and not np.any(bits[codes] == NEGATIVE_ZERO)


def lossless_weight(tensor: ReleaseTensor) -> dcformat.Quantized | dcformat.Raw:
    """The smallest exact encoding of a layer's decoded weight: raw float32, sparse codes
    (fillers dropped, dcformat inserts its own) or dense codes."""
    shape = tensor.layer.weight_shape
    all_codes = dense_codes(tensor)
    options: list[dcformat.Quantized | dcformat.Raw] = [
        dcformat.Raw(tensor.codebook[all_codes]),
        dcformat.Quantized(tensor.codebook, all_codes, shape),
    ]
    real = tensor.codes != 0
    if _sparse_is_exact(tensor.codebook, tensor.codes[real]):
        options.append(
            dcformat.Quantized(tensor.codebook, tensor.codes[real], shape, positions=tensor.positions[real])
        )
    return cheapest(f"{tensor.layer.name}.weight", options)[0]


def read_net(
    net_path: str | os.PathLike[str], prototxt_path: str | os.PathLike[str]
) -> dict[str, dcformat.Raw | dcformat.Quantized]:
    """Lossless dcformat tensors (``<layer>.weight``, ``<layer>.bias``) of a release file;
    they decode bit for bit to what the release decoder produces."""
    prototxt = Path(prototxt_path)
    layers = release_layers(parse(prototxt.read_text(), str(prototxt)))
    try:
        release = read_release(Path(net_path).read_bytes(), layers)
    except CaffeImportError as e:
        raise CaffeImportError(f"{net_path}: {e}") from None
    tensors: dict[str, dcformat.Raw | dcformat.Quantized] = {}
    for t in release:
        tensors[f"{t.layer.name}.weight"] = lossless_weight(t)
        tensors[f"{t.layer.name}.bias"] = dcformat.Raw(t.bias)
    return tensors
