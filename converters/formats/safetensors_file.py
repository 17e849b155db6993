"""safetensors in and out, streamed: one tensor in memory at a time in either direction.

The format: a little-endian u64 N, N bytes of JSON header (name -> dtype, shape,
data_offsets; "__metadata__" -> str map), then the tensors' bytes back to back.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from dcformat import DcnnFile, Source, dtypes, replacing

from ..errors import ConvertError
from ..weight import Weight
from .base import Format, ModelInput, check_input, stored_tensors, ties_of, with_ties

MAX_HEADER_BYTES = 100 << 20  # the limit of the safetensors library
DTYPE_CODES = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "int8": "I8",
    "int16": "I16",
    "int32": "I32",
    "int64": "I64",
    "uint8": "U8",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "bool": "BOOL",
}
DTYPES = {code: name for name, code in DTYPE_CODES.items()}


Entry = tuple[str, str, tuple[int, ...], int, int]  # name, dtype, shape, data begin, data end


def read_safetensors(path: Path, **_: Any) -> ModelInput:
    """Open a .safetensors file; its header is checked now, tensors are read as iterated."""
    start, entries, metadata = read_header(path)

    def weights() -> Iterator[Weight]:
        # read, not mapped: pages of a mapped file would count in the process's memory
        with open(path, "rb") as f:
            for name, dtype, shape, begin, stop in entries:
                yield read_tensor(f, path, name, dtype, shape, start + begin, stop - begin)

    nbytes = sum(e[4] - e[3] for e in entries)
    return ModelInput(weights, nbytes, metadata, Source("safetensors"))


def read_tensor(
    f: BinaryIO, path: Path, name: str, dtype: str, shape: tuple[int, ...], offset: int, nbytes: int
) -> Weight:
    """One tensor of ``nbytes`` at file ``offset`` of an open safetensors file."""
    array = np.empty(shape, dtype=dtypes.storage(dtype))
    f.seek(offset)
    if f.readinto(array.reshape(-1).view(np.uint8)) != nbytes:
        raise _corrupt(path, f"tensor {name!r} is cut short")
    return Weight(name, array, dtype)


def read_header(path: Path) -> tuple[int, list[Entry], dict[str, str]]:
    """A checked safetensors header: where the data starts, the entries in header order
    (offsets relative to the data) and ``__metadata__``."""
    check_input(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _corrupt(path, f"file of {size} bytes is too short")
        (header_len,) = struct.unpack("<Q", head)
        if not 2 <= header_len <= min(MAX_HEADER_BYTES, size - 8):
            raise _corrupt(path, f"header length {header_len} does not fit a file of {size} bytes")
        header_bytes = f.read(header_len)
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(path, f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _corrupt(path, "__metadata__ must map strings to strings")
    start = 8 + header_len
    entries = [_entry(path, name, info) for name, info in header.items()]
    end = 0
    for name, _, _, begin, stop in sorted(entries, key=lambda e: e[3]):
        if begin != end:
            raise _corrupt(path, f"tensor {name!r} does not start where the previous one ends")
        end = stop
    if start + end != size:
        raise _corrupt(path, f"tensors take {end} bytes but the file holds {size - start} after the header")
    return start, entries, metadata


def _entry(path: Path, name: str, info: Any) -> Entry:
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise _corrupt(path, f"entry {name!r} lacks dtype, shape or data_offsets")
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if code not in DTYPES:
        raise ConvertError(f"tensor {name!r} has unsupported dtype {code}", path=str(path))
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise _corrupt(path, f"tensor {name!r} has a bad shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise _corrupt(path, f"tensor {name!r} has bad data_offsets {offsets!r}")
    dtype = DTYPES[code]
    begin, stop = offsets
    expected = int(np.prod(shape, dtype=object)) * dtypes.itemsize(dtype)
    if not 0 <= begin <= stop or stop - begin != expected:
        raise _corrupt(path, f"tensor {name!r} has {stop - begin} bytes of data, its shape needs {expected}")
    return name, dtype, tuple(shape), begin, stop


def _corrupt(path: Path, message: str) -> ConvertError:
    return ConvertError(f"not a valid safetensors file: {message}", path=str(path))


def write_safetensors(src: Path, path: Path, options: Mapping[str, Any]) -> None:
    """Write every tensor of a .dcnn file to ``path`` (atomically), one at a time; the .dcnn
    metadata becomes ``__metadata__``."""
    with stored_tensors(src) as (dcnn, stored):
        write_tensors(dcnn, path, stored)


def write_tensors(
    dcnn: DcnnFile,
    path: Path,
    stored: Callable[[str], np.ndarray],
    names: Sequence[str] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write the tensors ``names`` (default: all, tied aliases included as copies: safetensors
    has no ties) of an open .dcnn file to ``path`` (atomically), one at a time.

    ``stored(name)`` gives a tensor's stored-form array; ``metadata`` (default: the .dcnn
    metadata) becomes ``__metadata__``.
    """
    ties = ties_of(dcnn)
    names = with_ties(dcnn.keys(), ties) if names is None else names
    target = {alias: name for alias, (name, _) in ties.items()}
    header: dict[str, Any] = {}
    metadata = dcnn.metadata() if metadata is None else metadata
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name in names:
        info = dcnn.info(target.get(name, name))
        header[name] = {
            "dtype": DTYPE_CODES[info.dtype],
            "shape": list(info.shape),
            "data_offsets": [offset, offset + info.dense_bytes],
        }
        offset += info.dense_bytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with replacing(path) as tmp, open(tmp, "wb") as out:
        out.write(struct.pack("<Q", len(text)) + text)
        for name in names:
            out.write(np.ascontiguousarray(stored(target.get(name, name))).data)


FORMAT = Format("safetensors", (".safetensors",), read=read_safetensors, write=write_safetensors)
