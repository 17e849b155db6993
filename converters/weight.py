"""One tensor of a model on its way to compression, in dcformat's stored form.

The stored form is what dcformat reads and writes: a little-endian numpy array, with
bfloat16 (which numpy lacks) held as its 16 bits in a uint16 array.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from dcformat import Quantized, Raw, dtypes

from .errors import ConvertError

Layer = Literal["conv", "fc"]
# "quantized_bias": the float bias of an operator that computes in integers and quantizes its
# activations as it runs (DynamicQuantizeLSTM, DynamicQuantizeMatMul, MatMulIntegerToFloat)
Role = Literal["weight", "embedding", "bias", "quantized_bias", "norm", "scale", "zero_point"]
EXACT_ROLES: frozenset[str] = frozenset({"bias", "quantized_bias", "norm", "scale", "zero_point"})
# roles whose values must not move at all: not even to float16 (see CompressionConfig.extras)
UNTOUCHED_ROLES: frozenset[str] = frozenset({"quantized_bias", "scale", "zero_point"})
DTYPE_NAMES = (
    "float32",
    "float16",
    "bfloat16",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
)


@dataclass(frozen=True)
class Weight:
    """A named tensor: stored-form array (bfloat16 as uint16 bits) and dtype name.

    ``layer`` is "conv" or "fc", and ``role`` what the tensor is to its operator (a weight, an
    embedding table, a bias, a norm's scale or shift, a quantization scale or zero point), when
    the model itself says (a module type, an ONNX operator's input); without them the shape
    decides. Roles in EXACT_ROLES are never coded unless a rule says otherwise.
    ``encodings`` are set when the source is already compressed (a Deep Compression release
    file): exact encodings of it, of which the cheapest is written as it is.
    """

    name: str
    array: np.ndarray
    dtype: str
    layer: Layer | None = None
    encodings: tuple[Raw | Quantized, ...] = ()
    role: Role | None = None

    def outline(self) -> Weight:
        """This weight with a stand-in array of its shape and dtype that holds no data (for
        planning over a model without reading it)."""
        return replace(self, array=outline(self.array.shape, self.dtype))

    def values(self) -> np.ndarray:
        """The float values (float32; float64 kept), for floating-point tensors."""
        return float_values(self.array, self.dtype)


def outline(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """A read-only array of ``shape`` in ``dtype``'s stored form, taking no memory."""
    return np.broadcast_to(np.zeros((), dtypes.storage(dtype)), shape)


def float_values(stored: np.ndarray, dtype: str) -> np.ndarray:
    """Float values of a stored-form float array, widened to float32 (float64 kept)."""
    if dtype == "bfloat16":
        return dtypes.bfloat16_to_float32(stored)
    return stored if dtype == "float64" else stored.astype(np.float32, copy=False)


def from_numpy(name: str, array: Any) -> Weight:
    """A numpy array (or array-like) as a Weight."""
    array = np.asarray(array)
    try:
        return Weight(name, array, dtypes.name_of(array.dtype))
    except KeyError:
        raise ConvertError(f"tensor {name!r} has unsupported dtype {array.dtype}") from None


def from_torch(name: str, tensor: Any) -> Weight:
    """A torch tensor as a Weight holding a stored-form copy on the CPU."""
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise ConvertError(f"{name!r} is a {type(tensor).__name__}, not a tensor")
    if tensor.layout != torch.strided:
        raise ConvertError(f"tensor {name!r} has layout {tensor.layout}; only dense tensors are supported")
    dtype = next((d for d in DTYPE_NAMES if getattr(torch, d) == tensor.dtype), None)
    if dtype is None:
        raise ConvertError(f"tensor {name!r} has unsupported dtype {tensor.dtype}")
    tensor = tensor.detach().to("cpu").contiguous()
    if dtype == "bfloat16":
        tensor = tensor.view(torch.int16)
    storage = dtypes.storage(dtype)
    return Weight(name, np.array(tensor.numpy().view(storage), dtype=storage), dtype)


def as_weight(name: str, value: Any) -> Weight:
    """A torch tensor or numpy array as a Weight."""
    if type(value).__module__.startswith("torch"):
        return from_torch(name, value)
    return from_numpy(name, value)
