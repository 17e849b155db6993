"""ONNX in and out: weights come out of wherever the model keeps them, the graph stays.

Weights are the graph initializers (all those of a dtype .dcnn holds) and the values of
large ``Constant`` nodes, in the main graph and in every subgraph (``If``/``Loop``/``Scan``
bodies), external data included. The model without their data, the *skeleton*, goes into
the .dcnn: each removed tensor is marked as external data at location ``dcnn`` with the
name of its .dcnn tensor, so the model can be rebuilt with the decoded weights.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dcformat import DcnnIOError, Source, dtypes

from ..errors import ConvertError
from ..weight import DTYPE_NAMES, Layer, Weight
from .base import Format, ModelInput, check_input, stored_tensors

MARKER_LOCATION = "dcnn"
CONSTANT_MIN_BYTES = 1024  # smaller Constant values (shapes, scalars) stay in the graph
EXTERNAL_DATA_BYTES = 1 << 30  # larger rebuilt models keep their weights in a .data file
# operators whose weight input is a convolution kernel or a fully connected matrix
CONV_OPS = {"Conv": (1,), "ConvTranspose": (1,)}
FC_OPS = {"Gemm": (0, 1), "MatMul": (0, 1), "Gather": (0,)}
_DATA_FIELDS = ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def _graphs(graph: Any) -> Iterator[Any]:
    """A graph and all its subgraphs, depth first."""
    from onnx import AttributeProto

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graphs(sub)


def _tensors(graph: Any) -> Iterator[tuple[str, Any, bool]]:
    """(name, TensorProto, is_initializer) of every initializer and Constant value."""
    for g in _graphs(graph):
        for tensor in g.initializer:
            yield tensor.name, tensor, True
        for node in g.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
                for attr in node.attribute:
                    if attr.name == "value" and attr.HasField("t"):
                        yield node.output[0], attr.t, False


def onnx_dtypes() -> dict[int, str]:
    """dtype names by ONNX TensorProto data type."""
    from onnx import TensorProto

    names = {"float32": "FLOAT", "float64": "DOUBLE"}
    return {getattr(TensorProto, names.get(d, d.upper())): d for d in DTYPE_NAMES}


def _layers(graph: Any) -> dict[str, Layer]:
    """conv/fc of the tensors that conv and fully connected operators take as weights."""
    layers: dict[str, Layer] = {}
    for g in _graphs(graph):
        for node in g.node:
            for ops, layer in ((CONV_OPS, "conv"), (FC_OPS, "fc")):
                if node.op_type in ops:
                    for i in ops[node.op_type]:
                        if i < len(node.input) and node.input[i]:
                            layers.setdefault(node.input[i], layer)  # type: ignore[arg-type]
    return layers


def read_onnx(path: Path, **_: Any) -> ModelInput:
    """Load an ONNX model (with its external data) and take its weights out of the graph."""
    import onnx

    check_input(path)
    try:
        model = onnx.load(str(path), load_external_data=True)
    except Exception as exc:  # protobuf, file and path-safety errors all mean "cannot load"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConvertError(f"cannot load as an ONNX model: {reason}", path=str(path)) from None
    if not model.ir_version or not model.HasField("graph"):
        raise ConvertError("not an ONNX model: no IR version or no graph", path=str(path))
    supported = onnx_dtypes()
    layers = _layers(model.graph)
    weights: list[Weight] = []
    taken: set[str] = set()
    for name, tensor, is_initializer in _tensors(model.graph):
        dtype = supported.get(tensor.data_type)
        if dtype is None or (tensor.HasField("data_location") and tensor.data_location == tensor.EXTERNAL):
            continue
        array = _array(tensor, dtype, name, path)
        if not is_initializer and array.nbytes < CONSTANT_MIN_BYTES:
            continue
        unique, n = name or "constant", 1
        while unique in taken:  # subgraphs may reuse a name; .dcnn names are unique
            n += 1
            unique = f"{name}#{n}"
        taken.add(unique)
        weights.append(Weight(unique, array, dtype, layers.get(name)))
        _mark(tensor, unique)
    source = Source("onnx", model.SerializeToString(), {"ir_version": str(model.ir_version)})
    return ModelInput(lambda: iter(weights), sum(w.array.nbytes for w in weights), {}, source)


def _array(tensor: Any, dtype: str, name: str, path: Path) -> np.ndarray:
    """A TensorProto's values in stored form (from raw_data or the typed field)."""
    storage = dtypes.storage(dtype)
    shape = tuple(tensor.dims)
    numel = int(np.prod(shape, dtype=object)) if all(d >= 0 for d in shape) else -1
    if tensor.HasField("raw_data"):
        size = len(tensor.raw_data) / storage.itemsize
        values = np.frombuffer(tensor.raw_data, dtype=storage) if size == numel else None
    else:
        field = {"float32": "float_data", "float64": "double_data", "int64": "int64_data"}.get(dtype)
        field = field or ("uint64_data" if dtype in ("uint32", "uint64") else "int32_data")
        typed = np.asarray(getattr(tensor, field))
        size = typed.size
        half = dtype in ("float16", "bfloat16")  # their bits, in int32_data
        values = typed.astype(np.uint16).view(storage) if half else typed.astype(storage)
    if size != numel:
        raise ConvertError(f"tensor {name!r}: its data does not fit its shape {shape}", path=str(path))
    return values.reshape(shape).copy()


def _mark(tensor: Any, name: str) -> None:
    """Remove a tensor's data, leaving a reference to the .dcnn tensor ``name``."""
    for field in _DATA_FIELDS:
        tensor.ClearField(field)
    del tensor.external_data[:]
    tensor.data_location = tensor.EXTERNAL
    tensor.external_data.add(key="location", value=MARKER_LOCATION)
    tensor.external_data.add(key="tensor", value=name)


def _marked_name(tensor: Any) -> str | None:
    if not tensor.HasField("data_location") or tensor.data_location != tensor.EXTERNAL:
        return None
    entries = {e.key: e.value for e in tensor.external_data}
    return entries.get("tensor") if entries.get("location") == MARKER_LOCATION else None


def write_onnx(src: Path, path: Path, options: Mapping[str, Any]) -> None:
    """Rebuild the ONNX model of a .dcnn made from ONNX, with the decoded weights.

    ``options["external_data"]`` None (the default) puts the weights in ``<path>.data`` only
    for models above 1 GiB.
    """
    with stored_tensors(src) as (dcnn, stored):
        _write(dcnn, stored, path, options.get("external_data"))


def _write(dcnn: Any, stored: Callable[[str], np.ndarray], path: Path, external_data: bool | None) -> None:
    import onnx
    from google.protobuf.message import DecodeError

    source = dcnn.source()
    if source.format != "onnx":
        what = f"from {source.format}" if source.format else "without a source model"
        raise ConvertError(f"only a .dcnn made from ONNX can be written as .onnx; this one was made {what}")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(source.skeleton)
    except DecodeError:
        raise ConvertError("the stored ONNX graph does not parse", path=dcnn.path) from None
    names = set(dcnn.keys())
    supported = onnx_dtypes()
    total = 0
    for _, tensor, _ in _tensors(model.graph):
        name = _marked_name(tensor)
        if name is None:
            continue
        if name not in names:
            raise ConvertError(f"the ONNX graph refers to a tensor {name!r} the file lacks", path=dcnn.path)
        info = dcnn.info(name)
        if supported.get(tensor.data_type) != info.dtype or tuple(tensor.dims) != info.shape:
            raise ConvertError(f"tensor {name!r} does not match its place in the ONNX graph", path=dcnn.path)
        del tensor.external_data[:]
        tensor.data_location = tensor.DEFAULT
        tensor.raw_data = np.ascontiguousarray(stored(name)).tobytes()
        total += len(tensor.raw_data)
    external = total > EXTERNAL_DATA_BYTES if external_data is None else external_data
    _save(model, path, external)


def _save(model: Any, path: Path, external: bool) -> None:
    """Save atomically: written in a temporary folder beside ``path``, then moved into place."""
    import onnx

    try:
        folder = tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as exc:
        raise DcnnIOError(f"cannot write here: {exc.strerror or exc}", path=str(path)) from None
    location = f"{path.name}.data"
    try:
        tmp = Path(folder) / path.name
        onnx.save_model(
            model, str(tmp), save_as_external_data=external, all_tensors_to_one_file=True, location=location
        )
        if external:
            os.replace(Path(folder) / location, path.parent / location)
        os.replace(tmp, path)
    except OSError as exc:
        raise DcnnIOError(f"cannot write: {exc.strerror or exc}", path=str(path)) from None
    finally:
        for leftover in Path(folder).iterdir():
            with contextlib.suppress(OSError):
                leftover.unlink()
        with contextlib.suppress(OSError):
            os.rmdir(folder)


FORMAT = Format("onnx", (".onnx",), read=read_onnx, write=write_onnx)
