"""Element types across frameworks, and tensors as numpy arrays in dcformat's stored form.

The stored form is what dcformat reads and writes: a little-endian numpy array, with
bfloat16 (which numpy lacks) held as its 16 bits in a uint16 array.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dcformat import dtypes

from .errors import ConvertError

# Each dtype .dcnn holds (torch names them the same), by its names in safetensors and ONNX.
_NAMES = {
    "float32": ("F32", "FLOAT"),
    "float16": ("F16", "FLOAT16"),
    "bfloat16": ("BF16", "BFLOAT16"),
    "float64": ("F64", "DOUBLE"),
    "int8": ("I8", "INT8"),
    "int16": ("I16", "INT16"),
    "int32": ("I32", "INT32"),
    "int64": ("I64", "INT64"),
    "uint8": ("U8", "UINT8"),
    "uint16": ("U16", "UINT16"),
    "uint32": ("U32", "UINT32"),
    "uint64": ("U64", "UINT64"),
    "bool": ("BOOL", "BOOL"),
}
SAFETENSORS_DTYPES = {codes[0]: name for name, codes in _NAMES.items()}
SAFETENSORS_CODES = {name: codes[0] for name, codes in _NAMES.items()}


def onnx_dtypes() -> dict[int, str]:
    """dtype names by ONNX TensorProto data type."""
    from onnx import TensorProto

    return {getattr(TensorProto, codes[1]): name for name, codes in _NAMES.items()}


def _torch_dtypes() -> dict[Any, str]:
    import torch

    return {getattr(torch, name): name for name in _NAMES}


def float_values(stored: np.ndarray, dtype: str) -> np.ndarray:
    """Float values of a stored-form float array, widened to float32 (float64 kept)."""
    if dtype == "bfloat16":
        return dtypes.bfloat16_to_float32(stored)
    return stored if dtype == "float64" else stored.astype(np.float32, copy=False)


def from_torch(name: str, tensor: Any) -> tuple[np.ndarray, str]:
    """A torch tensor as a stored-form numpy array (a copy on CPU) and its dtype name."""
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise ConvertError(f"{name!r} is a {type(tensor).__name__}, not a tensor")
    if tensor.layout != torch.strided:
        raise ConvertError(f"tensor {name!r} has layout {tensor.layout}; only dense tensors are supported")
    kind = _torch_dtypes().get(tensor.dtype)
    if kind is None:
        raise ConvertError(f"tensor {name!r} has unsupported dtype {tensor.dtype}")
    tensor = tensor.detach().to("cpu").contiguous()
    if kind == "bfloat16":
        tensor = tensor.view(torch.int16)
    array = tensor.numpy().view(dtypes.storage(kind)) if kind == "bfloat16" else tensor.numpy()
    return np.array(array, dtype=dtypes.storage(kind)), kind
