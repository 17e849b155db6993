"""What the writer takes: tensors stored exactly (Raw) or as codebook indices (Quantized);
and what the reader gives of a coded tensor without decoding it (Codes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from . import dtypes
from .errors import EncodeError
from .layout import MAX_ALPHABET, MAX_CODE_LENGTH, MAX_ELEMENTS, MAX_RANK


@dataclass(frozen=True)
class Raw:
    """A tensor stored exactly: its little-endian bytes, zstd-compressed when that is smaller.

    ``dtype`` is needed only for bfloat16, given as its bits in a uint16 array.
    ``zstd_level`` None stores the bytes as they are.
    """

    array: np.ndarray
    dtype: str | None = None
    zstd_level: int | None = None

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        if self.dtype is None:
            try:
                name = dtypes.name_of(array.dtype)
            except KeyError:
                raise EncodeError(f"unsupported dtype {array.dtype}") from None
        else:
            name = self.dtype
            if name not in dtypes.DTYPE_NAMES:
                raise EncodeError(f"unsupported dtype {name!r}")
            if dtypes.storage(name).itemsize != array.dtype.itemsize or array.dtype.kind not in "uifb":
                raise EncodeError(f"an array of {array.dtype} cannot hold {name} values")
        _check_shape(array.shape)
        object.__setattr__(self, "array", array)
        object.__setattr__(self, "dtype", name)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


@dataclass(frozen=True)
class Narrow:
    """A float32 or float64 tensor stored in a narrower float type (format 1.3, RAW_NARROW):
    each element rounded to the nearest ``stored`` value (float16 or bfloat16, ties to even),
    which a reader widens back exactly to the array's dtype. ``values()`` is what it reads.
    ``zstd_level`` as for :class:`Raw`."""

    array: np.ndarray
    stored: str = "float16"
    zstd_level: int | None = None

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        if array.dtype not in (np.float32, np.float64):
            raise EncodeError(f"a narrowed tensor holds float32 or float64 values, not {array.dtype}")
        if self.stored not in ("float16", "bfloat16"):
            raise EncodeError(f"values are narrowed to float16 or bfloat16, not {self.stored!r}")
        _check_shape(array.shape)
        object.__setattr__(self, "array", array)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> str:
        return dtypes.name_of(self.array.dtype)

    def narrowed(self) -> np.ndarray:
        """The stored elements: float16 values, or bfloat16 bits as uint16 (float64 values
        go to bfloat16 through float32)."""
        with np.errstate(over="ignore"):  # past the stored type's range: infinity, as cast
            if self.stored == "float16":
                return self.array.astype(np.float16)
            return dtypes.bfloat16_bits(self.array.astype(np.float32))

    def values(self) -> np.ndarray:
        """The tensor a reader decodes: the stored elements widened to the array's dtype."""
        stored = self.narrowed()
        wide = stored.astype(np.float32) if self.stored == "float16" else dtypes.bfloat16_to_float32(stored)
        return wide.astype(self.array.dtype, copy=False)


@dataclass(frozen=True)
class Quantized:
    """A tensor whose elements are codebook values selected by integer codes.

    Dense codes (``positions`` None): one code per element, ``codes.shape == shape``.
    Sparse codes: one code per stored entry at the given strictly increasing flat
    (row-major) ``positions``; every other element is zero. ``codebook[0]`` must then be
    exactly +0.0, the padding-zero symbol. ``index_bits`` None lets the writer pick it.

    Format 1.1 extras (spec 5.6, 5.7): ``scales`` (1-D float32 or float16, finite and > 0,
    ``ceil(shape[0] / rows_per_scale)`` of them) multiply the codebook values of their rows
    (in float32, then rounded to ``dtype``); ``outliers`` ``(positions, values)`` are elements
    stored exactly, written over the decoded codes: strictly increasing flat positions and
    values in ``dtype`` (float arrays are rounded to it; bfloat16 also as uint16 bits).
    """

    codebook: np.ndarray
    codes: np.ndarray
    shape: tuple[int, ...]
    positions: np.ndarray | None = None
    index_bits: int | None = None
    dtype: str = "float32"
    scales: np.ndarray | None = None
    rows_per_scale: int = 1
    outliers: tuple[np.ndarray, np.ndarray] | None = None

    def __post_init__(self) -> None:
        codebook = np.asarray(self.codebook)
        if codebook.dtype not in (np.float32, np.float16) or codebook.ndim != 1:
            raise EncodeError("the codebook must be a 1-D float32 or float16 array")
        if not 1 <= codebook.size <= MAX_ALPHABET:
            raise EncodeError(f"the codebook has {codebook.size} values; 1 to {MAX_ALPHABET} allowed")
        if self.dtype not in dtypes.FLOAT_NAMES:
            raise EncodeError(f"a quantized tensor decodes to a float dtype, not {self.dtype!r}")
        shape = tuple(int(d) for d in self.shape)
        numel = _check_shape(shape)
        codes = np.asarray(self.codes)
        if codes.dtype.kind not in "ui":
            raise EncodeError(f"codes must be integers, not {codes.dtype}")
        if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= codebook.size):
            raise EncodeError(f"codes must lie in [0, {codebook.size})")
        positions = self.positions
        if positions is None:
            if codes.size != numel:
                raise EncodeError(f"{codes.size} codes for a tensor of {numel} elements")
            if self.index_bits is not None:
                raise EncodeError("index_bits applies to sparse codes only")
            codes = codes.reshape(-1)
        else:
            positions = np.asarray(positions)
            if positions.dtype.kind not in "ui" or positions.ndim != 1:
                raise EncodeError("positions must be a 1-D integer array")
            positions = positions.astype(np.int64)
            codes = codes.reshape(-1)
            if positions.size != codes.size:
                raise EncodeError(f"{positions.size} positions for {codes.size} codes")
            if positions.size and (positions[0] < 0 or positions[-1] >= numel):
                raise EncodeError(f"positions must lie in [0, {numel})")
            if np.any(np.diff(positions) <= 0):
                raise EncodeError("positions must be strictly increasing")
            if codebook[:1].view(np.uint16 if codebook.dtype == np.float16 else np.uint32)[0]:
                raise EncodeError("sparse codes need codebook[0] == +0.0 (the padding zero)")
            if self.index_bits is not None and not 1 <= self.index_bits <= MAX_CODE_LENGTH:
                raise EncodeError(f"index_bits must be 1..{MAX_CODE_LENGTH}")
        object.__setattr__(self, "scales", _checked_scales(self.scales, self.rows_per_scale, shape))
        object.__setattr__(self, "outliers", _checked_outliers(self.outliers, self.dtype, numel))
        object.__setattr__(self, "codebook", codebook)
        object.__setattr__(self, "codes", codes)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "positions", positions)

    @property
    def sparse(self) -> bool:
        return self.positions is not None

    @property
    def extended(self) -> bool:
        """Whether it needs format 1.1 (scales or outliers)."""
        return self.scales is not None or self.outliers is not None


@dataclass(frozen=True)
class Codes:
    """The compressed form of a coded tensor, for engines that compute on it.

    Sparse tensors give the positions of their stored entries, fillers left out. Format 1.1
    tensors also give their ``scales`` (float32, one per row) and ``outliers``
    ``(positions, stored-form values)``, which the decoded tensor applies after the codes.
    """

    codebook: np.ndarray
    codes: np.ndarray
    positions: np.ndarray | None
    shape: tuple[int, ...]
    scales: np.ndarray | None = None
    outliers: tuple[np.ndarray, np.ndarray] | None = None


@dataclass(frozen=True)
class Source:
    """What is needed to rebuild the source model (e.g. an ONNX graph without weights)."""

    format: str = ""
    skeleton: bytes = b""
    attributes: Mapping[str, str] = field(default_factory=dict)


def _checked_scales(
    scales: np.ndarray | None, rows_per_scale: int, shape: tuple[int, ...]
) -> np.ndarray | None:
    if scales is None:
        return None
    scales = np.asarray(scales)
    if scales.dtype not in (np.float32, np.float16) or scales.ndim != 1:
        raise EncodeError("scales must be a 1-D float32 or float16 array")
    if not shape:
        raise EncodeError("a scalar has no rows to scale")
    if isinstance(rows_per_scale, bool) or not isinstance(rows_per_scale, int) or rows_per_scale < 1:
        raise EncodeError("rows_per_scale must be a positive int")
    expected = -(-shape[0] // rows_per_scale)
    if scales.size != expected:
        raise EncodeError(
            f"{scales.size} scales for {shape[0]} rows of {rows_per_scale}: expected {expected}"
        )
    if not np.all(np.isfinite(scales) & (scales > 0)):
        raise EncodeError("scales must be finite and > 0")
    return scales


def _checked_outliers(
    outliers: tuple[np.ndarray, np.ndarray] | None, dtype: str, numel: int
) -> tuple[np.ndarray, np.ndarray] | None:
    if outliers is None:
        return None
    try:
        positions, values = (np.asarray(a) for a in outliers)
    except (TypeError, ValueError):
        raise EncodeError("outliers must be a pair (positions, values)") from None
    if positions.dtype.kind not in "ui" or positions.ndim != 1 or values.shape != positions.shape:
        raise EncodeError("outliers need 1-D integer positions and as many values")
    if not positions.size:
        raise EncodeError("outliers need at least one position (leave them None instead)")
    positions = positions.astype(np.int64)
    if positions[0] < 0 or positions[-1] >= numel or np.any(np.diff(positions) <= 0):
        raise EncodeError(f"outlier positions must be strictly increasing in [0, {numel})")
    storage = dtypes.storage(dtype)
    if values.dtype == storage or (dtype == "bfloat16" and values.dtype == np.uint16):
        values = values.astype(storage)
    elif values.dtype.kind == "f":
        values = dtypes.convert_floats(values, dtype)
    else:
        raise EncodeError(f"outlier values must be floats for a {dtype} tensor, not {values.dtype}")
    return positions, values


def _check_shape(shape: tuple[int, ...]) -> int:
    if len(shape) > MAX_RANK:
        raise EncodeError(f"rank {len(shape)} exceeds the maximum {MAX_RANK}")
    numel = span = 1
    for d in shape:
        if d < 0:
            raise EncodeError(f"negative dimension in shape {shape}")
        numel *= d
        span *= max(d, 1)  # the reader bounds empty tensors' shapes too
    if span > MAX_ELEMENTS:
        raise EncodeError(f"shape {shape} exceeds the maximum of {MAX_ELEMENTS} elements")
    return numel
