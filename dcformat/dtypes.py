"""Element types: names, numpy storage types and the bfloat16 conversions numpy lacks."""

from __future__ import annotations

import numpy as np

from . import dcnn_pb2 as pb

# name -> (header enum, numpy dtype of the stored little-endian bytes)
_TABLE: dict[str, tuple[int, np.dtype]] = {
    "float32": (pb.FLOAT32, np.dtype("<f4")),
    "float16": (pb.FLOAT16, np.dtype("<f2")),
    "bfloat16": (pb.BFLOAT16, np.dtype("<u2")),  # stored as its 16 bits
    "float64": (pb.FLOAT64, np.dtype("<f8")),
    "int8": (pb.INT8, np.dtype("i1")),
    "int16": (pb.INT16, np.dtype("<i2")),
    "int32": (pb.INT32, np.dtype("<i4")),
    "int64": (pb.INT64, np.dtype("<i8")),
    "uint8": (pb.UINT8, np.dtype("u1")),
    "uint16": (pb.UINT16, np.dtype("<u2")),
    "uint32": (pb.UINT32, np.dtype("<u4")),
    "uint64": (pb.UINT64, np.dtype("<u8")),
    "bool": (pb.BOOL, np.dtype("?")),
}
_BY_ENUM = {enum: name for name, (enum, _) in _TABLE.items()}

DTYPE_NAMES = tuple(_TABLE)
FLOAT_NAMES = ("float32", "float16", "bfloat16", "float64")
CODEBOOK_NAMES = ("float32", "float16")


def to_enum(name: str) -> int:
    return _TABLE[name][0]


def from_enum(value: int) -> str | None:
    """The dtype name of a header enum value, or None when unknown."""
    return _BY_ENUM.get(value)


def storage(name: str) -> np.dtype:
    """The numpy dtype whose bytes are the stored little-endian form of ``name``."""
    return _TABLE[name][1]


def itemsize(name: str) -> int:
    return _TABLE[name][1].itemsize


def name_of(dtype: np.dtype) -> str:
    """The dtype name of a numpy array's dtype (bfloat16 has no numpy dtype)."""
    dtype = np.dtype(dtype)
    name = "bool" if dtype == np.bool_ else dtype.newbyteorder("=").name
    if name not in _TABLE or name == "bfloat16":
        raise KeyError(name)
    return name


def bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 (round to nearest, ties to even); return the bits."""
    bits = np.ascontiguousarray(values, dtype="<f4").view("<u4")
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    nan = np.isnan(values)
    rounded = rounded.astype("<u2")
    if nan.any():  # keep NaNs quiet NaNs instead of rounding them into infinities
        rounded[nan] = (bits[nan] >> np.uint32(16)).astype("<u2") | np.uint16(0x0040)
    return rounded


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bits to float32 exactly."""
    wide = np.asarray(bits, dtype="<u2").astype("<u4")
    wide <<= np.uint32(16)  # in place: one array of the values' size, not two
    return wide.view("<f4")


def convert_floats(values: np.ndarray, name: str) -> np.ndarray:
    """Convert float values to the stored form of float dtype ``name``, rounding to nearest even.

    For bfloat16 the result holds the bits (uint16).
    """
    if name == "bfloat16":
        return bfloat16_bits(values.astype(np.float32))
    return values.astype(storage(name))


def is_nonzero(stored: np.ndarray, name: str) -> np.ndarray:
    """Elementwise "value != 0" of stored values (-0.0 is zero; NaN is not)."""
    if name == "bfloat16":
        return (stored & np.uint16(0x7FFF)) != 0
    return stored != 0
