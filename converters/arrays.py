"""Element types across frameworks, and tensors as numpy arrays in dcformat's stored form.

The stored form is what dcformat reads and writes: a little-endian numpy array, with
bfloat16 (which numpy lacks) held as its 16 bits in a uint16 array.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dcformat import dtypes

from .errors import ConvertError

# safetensors dtype codes of the dtypes .dcnn can hold
SAFETENSORS_DTYPES = {
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F64": "float64",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
    "U8": "uint8",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
    "BOOL": "bool",
}
SAFETENSORS_CODES = {name: code for code, name in SAFETENSORS_DTYPES.items()}


def float_values(stored: np.ndarray, dtype: str) -> np.ndarray:
    """Float values of a stored-form float array, widened to float32 (float64 kept)."""
    if dtype == "bfloat16":
        return dtypes.bfloat16_to_float32(stored)
    return stored if dtype == "float64" else stored.astype(np.float32, copy=False)


def _torch_dtypes() -> dict[Any, str]:
    import torch

    return {
        torch.float32: "float32",
        torch.float16: "float16",
        torch.bfloat16: "bfloat16",
        torch.float64: "float64",
        torch.int8: "int8",
        torch.int16: "int16",
        torch.int32: "int32",
        torch.int64: "int64",
        torch.uint8: "uint8",
        torch.uint16: "uint16",
        torch.uint32: "uint32",
        torch.uint64: "uint64",
        torch.bool: "bool",
    }


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
