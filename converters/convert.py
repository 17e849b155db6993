"""Convert models to and from .dcnn: the Python API behind dcnn-convert."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dcformat import DcnnFile, DcnnIOError, Source, TensorInfo, Writer, safe_open

from .arrays import from_torch
from .errors import ConvertError
from .folder_io import FORMAT as FOLDER_FORMAT
from .folder_io import file_tasks, is_folder_target, read_folder, write_folder
from .model_io import ModelInput, check_input
from .onnx_io import read_onnx, write_onnx
from .parallel import InMemory, Task, WorkerStats, compressed
from .pipeline.config import CompressionConfig
from .safetensors_io import read_safetensors, write_safetensors
from .settings import SAFE
from .summary import format_table, row, totals
from .torch_io import read_checkpoint, read_module, write_checkpoint

READERS = {
    ".safetensors": read_safetensors,
    ".pt": read_checkpoint,
    ".pth": read_checkpoint,
    ".onnx": read_onnx,
}


@dataclass
class ConversionReport:
    """What a conversion did: the .dcnn's tensors, its size and the time taken.

    Compressing also gives each tensor's relative RMS error (``errors``, 0.0 when stored
    exactly) and the config used (``config``); decoding gives neither.
    """

    source: str
    destination: str
    tensors: list[TensorInfo]
    dcnn_bytes: int
    seconds: float
    errors: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    workers: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """All tensors' dense bytes over the whole .dcnn file's bytes."""
        return totals(self.tensors, self.dcnn_bytes)["ratio"] or 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "seconds": self.seconds,
            "config": self.config,
            "total": totals(self.tensors, self.dcnn_bytes),
            "tensors": [row(info, self.errors.get(info.name)) for info in self.tensors],
            **({"workers": self.workers} if self.workers is not None else {}),
            **({"notes": self.notes} if self.notes else {}),
        }

    def table(self) -> str:
        return format_table(self.tensors, self.dcnn_bytes, self.errors)


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    config: CompressionConfig | None = None,
    *,
    force: bool = False,
    progress: bool = False,
    external_data: bool | None = None,
    prototxt: str | os.PathLike[str] | None = None,
    workers: int = 1,
    ray: bool = False,
    single_file: bool = False,
) -> ConversionReport:
    """Convert ``src`` to ``dst``, the direction told by the file extensions.

    To .dcnn from .safetensors, .pt/.pth (a state_dict) or .onnx, compressed by ``config``, or
    from a Deep Compression release file (.net, with its deploy ``prototxt``) losslessly
    (default: the quality-safe :data:`converters.settings.SAFE`); from .dcnn to any of
    these (.onnx only for a .dcnn made from ONNX; ``external_data`` None keeps the weights
    of models over 1 GiB in a ``.data`` file beside it). ``dst`` is written atomically and
    is not overwritten unless ``force``.

    ``src`` may be a model folder (single or sharded safetensors or .bin/.pt, see
    :mod:`converters.folder_io`), and ``dst`` a folder to restore one (``single_file``:
    one weight file instead of the shards). Tensors are compressed by ``workers``
    processes, or by Ray tasks with ``ray``; the file is the same either way.
    """
    src_path, dst_path = Path(src), Path(dst)
    into, out = src_path.suffix.lower(), dst_path.suffix.lower()
    if src_path.is_dir() and out == ".dcnn":
        _check_output(dst_path, force)
        model, tasks = read_folder(src_path)
        return _to_dcnn(model, str(src_path), dst_path, config, progress, tasks, workers, ray)
    if into == ".dcnn" and is_folder_target(dst_path):
        check_input(src_path)
        return _to_folder(src_path, dst_path, force, single_file)
    if into == ".net" and out == ".dcnn":
        if prototxt is None:
            raise ConvertError("a .net release file needs its deploy prototxt (--prototxt)", rule="usage")
        _check_paths(src_path, dst_path, force)
        check_input(Path(prototxt))
        return _release_to_dcnn(src_path, Path(prototxt), dst_path)
    if out == ".dcnn" and into in READERS:
        _check_paths(src_path, dst_path, force)
        model = READERS[into](src_path)
        tasks = file_tasks(src_path)[0] if into != ".onnx" else None
        return _to_dcnn(model, str(src_path), dst_path, config, progress, tasks, workers, ray)
    if into == ".dcnn" and out in READERS:
        _check_paths(src_path, dst_path, force)
        return _from_dcnn(src_path, dst_path, external_data)
    kinds = ", ".join(sorted(READERS))
    raise ConvertError(
        f"cannot convert {into or 'no extension'} to {out or 'no extension'}: convert {kinds} or a model "
        "folder to .dcnn, or .dcnn to one of them or a folder",
        rule="usage",
    )


def save_module(
    module: Any,
    dst: str | os.PathLike[str],
    config: CompressionConfig | None = None,
    *,
    force: bool = False,
    progress: bool = False,
) -> ConversionReport:
    """Compress a live ``torch.nn.Module`` into a .dcnn file (conv/fc told from its layers)."""
    dst_path = Path(dst)
    _check_output(dst_path, force)
    return _to_dcnn(read_module(module), type(module).__name__, dst_path, config, progress)


def _check_paths(src: Path, dst: Path, force: bool) -> None:
    check_input(src)
    _check_output(dst, force)


def _check_output(dst: Path, force: bool) -> None:
    if dst.exists() and not force:
        raise ConvertError("the output exists; use --force to overwrite it", path=str(dst))
    if dst.is_dir():
        raise DcnnIOError("the output is a folder", path=str(dst))


def _to_dcnn(
    model: ModelInput,
    source: str,
    dst: Path,
    config: CompressionConfig | None,
    progress: bool,
    tasks: list[Task] | None = None,
    workers: int = 1,
    ray: bool = False,
) -> ConversionReport:
    """Compress ``tasks`` (default: the model's weights, in memory) into ``dst``, in order."""
    from tqdm import tqdm

    config = SAFE if config is None else config
    start = time.perf_counter()
    attributes = {**model.source.attributes, "compression": json.dumps(config.to_dict(), sort_keys=True)}
    origin = Source(model.source.format, model.source.skeleton, attributes)
    errors: dict[str, float] = {}
    stats = WorkerStats()
    todo = tasks if tasks is not None else (InMemory(weight) for weight in model.weights())
    bar = tqdm(total=model.nbytes, unit="B", unit_scale=True, disable=not progress, leave=False)
    with bar, Writer(dst, metadata=model.metadata, source=origin) as writer:
        for result in compressed(todo, config, workers, ray=ray):
            record = writer.add_encoded(result.encoded())
            errors[record.name] = result.error
            stats.add(result)
            bar.set_postfix_str(record.name, refresh=False)
            bar.update(result.nbytes)
    with safe_open(dst) as dcnn:
        infos = [dcnn.info(name) for name in dcnn.keys()]
    seconds = time.perf_counter() - start
    backend = {"backend": "ray" if ray else "processes" if workers > 1 else "driver", "workers": workers}
    left_out = model.source.attributes.get("left_out")
    return ConversionReport(
        source,
        str(dst),
        infos,
        dst.stat().st_size,
        seconds,
        errors,
        config.to_dict(),
        {**backend, "processes": stats.rows(), "tasks": stats.tasks},
        [f"left out of the .dcnn: {left_out}"] if left_out else [],
    )


def _release_to_dcnn(net: Path, prototxt: Path, dst: Path) -> ConversionReport:
    """Losslessly re-encode a Deep Compression release file (.net + deploy prototxt)."""
    from .caffe.convert import read_net

    start = time.perf_counter()
    tensors = read_net(net, prototxt)
    source = Source("caffe-release", prototxt.read_bytes(), {"net_bytes": str(net.stat().st_size)})
    with Writer(dst, source=source) as writer:
        for name, tensor in tensors.items():
            writer.add(name, tensor)
    with safe_open(dst) as dcnn:
        infos = [dcnn.info(name) for name in dcnn.keys()]
    errors = dict.fromkeys(tensors, 0.0)
    seconds = time.perf_counter() - start
    return ConversionReport(
        str(net), str(dst), infos, dst.stat().st_size, seconds, errors, {"lossless": True}
    )


def _from_dcnn(src: Path, dst: Path, external_data: bool | None) -> ConversionReport:
    start = time.perf_counter()
    out = dst.suffix.lower()
    with safe_open(src) as dcnn:
        bfloat16 = any(dcnn.info(name).dtype == "bfloat16" for name in dcnn.keys())
    checkpoint = out in (".pt", ".pth")
    with safe_open(src, framework="torch" if checkpoint or bfloat16 else "numpy") as dcnn:
        if checkpoint:
            write_checkpoint(dcnn, dst)
        elif out == ".onnx":
            write_onnx(dcnn, dst, _stored(dcnn), external_data)
        else:
            write_safetensors(dcnn, dst, _stored(dcnn))
        infos = [dcnn.info(name) for name in dcnn.keys()]
    return ConversionReport(str(src), str(dst), infos, src.stat().st_size, time.perf_counter() - start)


def _to_folder(src: Path, dst: Path, force: bool, single_file: bool) -> ConversionReport:
    start = time.perf_counter()
    with safe_open(src) as dcnn:
        bfloat16 = any(dcnn.info(name).dtype == "bfloat16" for name in dcnn.keys())
        source = dcnn.source()
    pytorch = source.format == FOLDER_FORMAT and source.attributes.get("kind") == "pytorch"
    with safe_open(src, framework="torch" if pytorch or bfloat16 else "numpy") as dcnn:
        written = write_folder(dcnn, dst, _stored(dcnn), force=force, single_file=single_file)
        infos = [dcnn.info(name) for name in dcnn.keys()]
    notes = [f"restored {len(written)} files: {', '.join(written)}"]
    if source.attributes.get("left_out"):
        notes.append(f"left out when converted: {source.attributes['left_out']}")
    seconds = time.perf_counter() - start
    return ConversionReport(str(src), str(dst), infos, src.stat().st_size, seconds, notes=notes)


def _stored(dcnn: DcnnFile) -> Callable[[str], np.ndarray]:
    """Stored-form arrays of an open file's tensors (bfloat16 bits come exactly through torch)."""
    if dcnn.framework == "numpy":
        return dcnn.get_tensor
    return lambda name: from_torch(name, dcnn.get_tensor(name))[0]
