"""ONNX in and out: weights come out of wherever the model keeps them, the graph stays.

Weights are the graph initializers (all those of a dtype .dcnn holds) and the values of
large ``Constant`` nodes, in the main graph and in every subgraph (``If``/``Loop``/``Scan``
bodies), external data included. The model without their data, the *skeleton*, goes into
the .dcnn: each removed tensor is marked as external data at location ``dcnn`` with the
name of its .dcnn tensor, so the model can be rebuilt with the decoded weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dcformat import Source, dtypes, replacing

from ..errors import ConvertError
from ..weight import DTYPE_NAMES, Layer, Role, Weight, outline
from .base import Format, ModelInput, check_input, stored_tensors

MARKER_LOCATION = "dcnn"
CONSTANT_MIN_BYTES = 1024  # smaller Constant values (shapes, scalars) stay in the graph
EXTERNAL_DATA_BYTES = 1 << 30  # larger rebuilt models keep their weights in a .data file
# operators whose weight input is a convolution kernel or a fully connected matrix
_CONV = ("weight", "conv")
_FC = ("weight", "fc")
_BIAS = ("bias", None)
_QBIAS = ("quantized_bias", None)
_NORM = ("norm", None)
_SCALE = ("scale", None)
_ZERO = ("zero_point", None)
_RNN = {1: _FC, 2: _FC, 3: _BIAS}
# How operators use their inputs, by input index: (role, conv/fc). Roles that are not weights
# (biases, norms, quantization scales and zero points) are never coded; those of
# UNTOUCHED_ROLES are stored exactly.
USES: dict[str, dict[int, tuple[Role, Layer | None]]] = {
    "Conv": {1: _CONV, 2: _BIAS},
    "ConvTranspose": {1: _CONV, 2: _BIAS},
    "Gemm": {0: _FC, 1: _FC, 2: _BIAS},
    "MatMul": {0: _FC, 1: _FC},
    "Gather": {0: ("embedding", "fc")},
    "LSTM": {**_RNN, 7: _BIAS},
    "GRU": _RNN,
    "RNN": _RNN,
    "BatchNormalization": {1: _NORM, 2: _NORM, 3: _NORM, 4: _NORM},
    "LayerNormalization": {1: _NORM, 2: _NORM},
    "SimplifiedLayerNormalization": {1: _NORM},
    "SkipLayerNormalization": {2: _NORM, 3: _NORM, 4: _BIAS},
    "InstanceNormalization": {1: _NORM, 2: _NORM},
    "GroupNormalization": {1: _NORM, 2: _NORM},
    "QuantizeLinear": {1: _SCALE, 2: _ZERO},
    "DequantizeLinear": {1: _SCALE, 2: _ZERO},
    "MatMulInteger": {2: _ZERO, 3: _ZERO},
    "ConvInteger": {2: _ZERO, 3: _ZERO},
    "QLinearMatMul": {1: _SCALE, 2: _ZERO, 3: _FC, 4: _SCALE, 5: _ZERO, 6: _SCALE, 7: _ZERO},
    "QLinearConv": {1: _SCALE, 2: _ZERO, 3: _CONV, 4: _SCALE, 5: _ZERO, 6: _SCALE, 7: _ZERO, 8: _BIAS},
    "DynamicQuantizeMatMul": {1: _FC, 2: _SCALE, 3: _ZERO, 4: _QBIAS},
    "MatMulIntegerToFloat": {1: _FC, 2: _SCALE, 3: _SCALE, 4: _ZERO, 5: _ZERO, 6: _QBIAS},
    "DynamicQuantizeLSTM": {1: _FC, 2: _FC, 3: _QBIAS, 7: _QBIAS, 8: _SCALE, 9: _ZERO, 10: _SCALE, 11: _ZERO},
    "Attention": {1: _FC, 2: _BIAS},
}
# An Add of a constant to the output of these is a bias.
_BIASED = ("MatMul", "Gemm", "Conv", "ConvTranspose")
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


def _uses(graph: Any) -> dict[str, tuple[Role, Layer | None]]:
    """Role (and conv/fc) of each tensor that an operator of :data:`USES` takes, or that an Add
    puts on a linear operator's output. A tensor with several uses keeps a role that is not a
    weight's, if any, so that it stays exact."""
    uses: dict[str, tuple[Role, Layer | None]] = {}

    def use(name: str, how: tuple[Role, Layer | None]) -> None:
        if name and (name not in uses or uses[name][0] in ("weight", "embedding")):
            uses[name] = how

    for g in _graphs(graph):
        made_by = {out: node.op_type for node in g.node for out in node.output}
        for node in g.node:
            for i, how in USES.get(node.op_type, {}).items():
                if i < len(node.input):
                    use(node.input[i], how)
            if node.op_type == "Add" and len(node.input) == 2:
                for mine, other in ((0, 1), (1, 0)):
                    if made_by.get(node.input[other]) in _BIASED and node.input[mine] not in made_by:
                        use(node.input[mine], _BIAS)
    return uses


def read_onnx(path: Path, **_: Any) -> ModelInput:
    """Load an ONNX model's graph and take its weights out of it.

    External data is not loaded with the graph: each tensor's bytes are read from its file
    when the conversion asks for that tensor (references are checked now), so a model whose
    weights live in external files is never held in memory whole. Weights stored inside
    the .onnx file come out of the parsed graph, which then drops them.
    """
    import onnx

    check_input(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf and file errors all mean "cannot load"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConvertError(f"cannot load as an ONNX model: {reason}", path=str(path)) from None
    if not model.ir_version or not model.HasField("graph"):
        raise ConvertError("not an ONNX model: no IR version or no graph", path=str(path))
    supported = onnx_dtypes()
    uses = _uses(model.graph)
    entries: list[tuple[Weight, Callable[[], np.ndarray], int]] = []  # the weight's outline, read, bytes
    taken: set[str] = set()
    for name, tensor, is_initializer in _tensors(model.graph):
        dtype = supported.get(tensor.data_type)
        if dtype is None:
            continue
        external = tensor.HasField("data_location") and tensor.data_location == tensor.EXTERNAL
        if external:
            load, nbytes = _external(tensor, dtype, name, path)
        else:
            array = _array(tensor, dtype, name, path)
            load, nbytes = _Held(array), array.nbytes
        if not is_initializer and nbytes < CONSTANT_MIN_BYTES:
            continue
        unique, n = name or "constant", 1
        while unique in taken:  # subgraphs may reuse a name; .dcnn names are unique
            n += 1
            unique = f"{name}#{n}"
        taken.add(unique)
        role, layer = uses.get(name, (None, None))
        entries.append(
            (Weight(unique, outline(tuple(tensor.dims), dtype), dtype, layer, role=role), load, nbytes)
        )
        _mark(tensor, unique)
    source = Source("onnx", model.SerializeToString(), {"ir_version": str(model.ir_version)})
    del model

    def weights() -> Iterator[Weight]:
        for stand_in, read, _ in entries:
            yield replace(stand_in, array=read())

    def tasks() -> list[Any]:
        from ..parallel import Deferred

        return [Deferred(stand_in, read, nbytes) for stand_in, read, nbytes in entries]

    return ModelInput(weights, sum(entry[2] for entry in entries), {}, source, tasks=tasks)


@dataclass(frozen=True)
class _Held:
    """An array the graph held, read from memory (picklable, unlike a closure)."""

    array: np.ndarray

    def __call__(self) -> np.ndarray:
        return self.array


@dataclass(frozen=True)
class _ExternalSlice:
    """A tensor's bytes in an external data file, read on call (picklable: workers read it)."""

    file: str
    offset: int
    dtype: str
    shape: tuple[int, ...]
    name: str
    source: str

    def __call__(self) -> np.ndarray:
        numel = int(np.prod(self.shape, dtype=object))
        values = np.fromfile(self.file, dtype=dtypes.storage(self.dtype), count=numel, offset=self.offset)
        if values.size != numel:  # the file changed since it was checked
            raise ConvertError(f"tensor {self.name!r}: its external data was cut short", path=self.source)
        return values.reshape(self.shape)


def _external(tensor: Any, dtype: str, name: str, path: Path) -> tuple[Callable[[], np.ndarray], int]:
    """A reader of a tensor's external data and its size; the reference is checked now (a file
    inside the model's folder, a range inside that file, as many bytes as the shape needs)."""
    info = {e.key: e.value for e in tensor.external_data}
    folder = path.resolve().parent
    location = info.get("location", "")
    file = (folder / location).resolve()
    storage = dtypes.storage(dtype)
    shape = tuple(tensor.dims)
    numel = int(np.prod(shape, dtype=object)) if all(d >= 0 for d in shape) else -1
    try:
        offset = int(info.get("offset", 0))
        size = file.stat().st_size if file.is_file() else -1
        length = int(info["length"]) if "length" in info else size - offset
    except (ValueError, OSError) as exc:
        raise ConvertError(f"cannot load as an ONNX model: tensor {name!r}: {exc}", path=str(path)) from None
    if not location or Path(location).is_absolute() or not file.is_relative_to(folder):
        raise ConvertError(
            f"cannot load as an ONNX model: tensor {name!r}: external data {location!r} is not a file "
            "in the model's folder",
            path=str(path),
        )
    if size < 0 or offset < 0 or length < 0 or offset + length > size:
        raise ConvertError(
            f"cannot load as an ONNX model: tensor {name!r}: external data {location!r} is missing or "
            "shorter than its reference",
            path=str(path),
        )
    if length != numel * storage.itemsize:
        raise ConvertError(f"tensor {name!r}: its data does not fit its shape {shape}", path=str(path))
    return _ExternalSlice(str(file), offset, dtype, shape, name, str(path)), length


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
    source = dcnn.source()
    if source.format != "onnx":
        what = f"from {source.format}" if source.format else "without a source model"
        raise ConvertError(f"only a .dcnn made from ONNX can be written as .onnx; this one was made {what}")
    infos = {name: dcnn.info(name) for name in dcnn.keys()}
    shapes = {name: (info.dtype, info.shape) for name, info in infos.items()}
    model = rebuild(source.skeleton, shapes, stored, where=dcnn.path)
    total = sum(len(t.raw_data) for name, t, _ in _tensors(model.graph))
    external = total > EXTERNAL_DATA_BYTES if external_data is None else external_data
    _save(model, path, external)


def rebuild(
    skeleton: bytes,
    shapes: Mapping[str, tuple[str, tuple[int, ...]]],
    stored: Callable[[str], np.ndarray],
    where: str | None = None,
) -> Any:
    """The ONNX model of a skeleton (see :func:`read_onnx`) with each weight's place filled
    by ``stored(name)`` (stored form); ``shapes`` gives each name's dtype and shape, checked
    against its place."""
    import onnx
    from google.protobuf.message import DecodeError

    model = onnx.ModelProto()
    try:
        model.ParseFromString(skeleton)
    except DecodeError:
        raise ConvertError("the stored ONNX graph does not parse", path=where) from None
    supported = onnx_dtypes()
    for _, tensor, _ in _tensors(model.graph):
        name = _marked_name(tensor)
        if name is None:
            continue
        if name not in shapes:
            raise ConvertError(f"the ONNX graph refers to a tensor {name!r} the file lacks", path=where)
        dtype, shape = shapes[name]
        if supported.get(tensor.data_type) != dtype or tuple(tensor.dims) != tuple(shape):
            raise ConvertError(f"tensor {name!r} does not match its place in the ONNX graph", path=where)
        del tensor.external_data[:]
        tensor.data_location = tensor.DEFAULT
        tensor.raw_data = np.ascontiguousarray(stored(name)).tobytes()
    return model


def _save(model: Any, path: Path, external: bool) -> None:
    """Save atomically; with ``external``, the bytes of tensors of 1 KiB or more go to
    ``<path>.data`` (64-byte aligned), replaced before the model so that a new model never
    names old data."""
    if not external:
        with replacing(path) as tmp:
            tmp.write_bytes(model.SerializeToString())
        return
    location = f"{path.name}.data"
    with replacing(path.parent / location) as tmp_data:
        with open(tmp_data, "wb") as out:
            for _, tensor, _ in _tensors(model.graph):
                if len(tensor.raw_data) < CONSTANT_MIN_BYTES:  # small values stay in the graph
                    continue
                out.write(bytes(-out.tell() % 64))
                offset = out.tell()
                out.write(tensor.raw_data)
                tensor.ClearField("raw_data")
                tensor.data_location = tensor.EXTERNAL
                for key, value in (
                    ("location", location),
                    ("offset", offset),
                    ("length", out.tell() - offset),
                ):
                    tensor.external_data.add(key=key, value=str(value))
    with replacing(path) as tmp:
        tmp.write_bytes(model.SerializeToString())


FORMAT = Format("onnx", (".onnx",), read=read_onnx, write=write_onnx)
