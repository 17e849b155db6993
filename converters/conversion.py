"""Convert models to and from .dcnn: the Python API behind dcnn-convert."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcformat import DcnnIOError, EncodedTensor, Source, TensorInfo, Writer, safe_open

from .compress.config import SAFE, CompressionConfig
from .compress.tensor import plan_for
from .errors import ConvertError
from .formats import by_suffix, check_input, formats
from .formats.base import TIES, ModelInput
from .formats.hf_folder import SOURCE_FORMAT, file_tasks, is_folder_target, read_folder, write_folder
from .parallel import InMemory, Task, WorkerStats, compressed
from .summary import format_table, row, totals


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
    output_error: float | None = None  # measured on the calibration data, when there was some
    workers: dict[str, Any] | None = None  # how tensors were compressed: backend, per-process stats
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
            "output_error": self.output_error,
            "total": totals(self.tensors, self.dcnn_bytes),
            "tensors": [row(info, self.errors.get(info.name)) for info in self.tensors],
            **({"workers": self.workers} if self.workers is not None else {}),
            **({"notes": self.notes} if self.notes else {}),
        }

    def table(self) -> str:
        text = format_table(self.tensors, self.dcnn_bytes, self.errors)
        if self.output_error is not None:
            text += (
                f"\noutput error on the calibration data: {self.output_error:.4g} (mean ||y - y0|| / ||y0||)"
            )
        return text


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    config: CompressionConfig = SAFE,
    *,
    force: bool = False,
    progress: bool = False,
    external_data: bool | None = None,
    prototxt: str | os.PathLike[str] | None = None,
    calibration: str | os.PathLike[str] | None = None,
    workers: int = 1,
    ray: bool = False,
    single_file: bool = False,
) -> ConversionReport:
    """Convert ``src`` to ``dst``, the direction told by the file extensions.

    To .dcnn from any readable format (.safetensors, .pt/.pth state_dicts, .onnx), compressed
    by ``config`` (default: the quality-safe :data:`converters.SAFE`), or from a Deep
    Compression release file (.net, with its deploy ``prototxt``) losslessly; from .dcnn to
    any writable format (.onnx only for a .dcnn made from ONNX; ``external_data`` None keeps
    the weights of models over 1 GiB in a ``.data`` file beside it). ``dst`` is written
    atomically and is not overwritten unless ``force``.

    ``src`` may be a model folder (single or sharded safetensors or .bin/.pt, see
    :mod:`converters.formats.hf_folder`), and ``dst`` a folder to restore one
    (``single_file``: one weight file instead of the shards). Tensors are compressed by
    ``workers`` processes, or by Ray tasks with ``ray``; the file is the same either way.

    ``calibration`` (ONNX sources): a ``.npz`` of sample inputs, one array per graph input,
    sample i being ``array[i]``; the output error on it is measured and reported, and with
    ``config.max_output_error`` each tensor's bits are searched for the smallest file within it.
    """
    src_path, dst_path = Path(src), Path(dst)
    into, out = src_path.suffix.lower(), dst_path.suffix.lower()
    reader, writer = by_suffix(into), by_suffix(out)
    parallel = {"workers": workers, "ray": ray}
    if src_path.is_dir() and out == ".dcnn":
        _check_output(dst_path, force)
        _no_target(config)
        model, tasks = read_folder(src_path)
        return _to_dcnn(model, str(src_path), dst_path, config, progress, tasks, **parallel)
    if into == ".dcnn" and is_folder_target(dst_path):
        check_input(src_path)
        return _to_folder(src_path, dst_path, force, single_file)
    if out == ".dcnn" and reader is not None and reader.read is not None:
        _check_paths(src_path, dst_path, force)
        options = {} if prototxt is None else {"prototxt": Path(prototxt)}
        model = reader.read(src_path, **options)
        if calibration is None:
            _no_target(config)
            tasks = file_tasks(src_path)[0] if reader.name in ("safetensors", "pytorch") else None
            if tasks is None and model.tasks is not None:
                tasks = model.tasks()
            if tasks is not None and TIES in model.source.attributes:  # tied aliases are stored once
                tied = json.loads(model.source.attributes[TIES])
                tasks = [task for task in tasks if task.name not in tied]
            return _to_dcnn(model, str(src_path), dst_path, config, progress, tasks, **parallel)
        if reader.name != "onnx":
            raise ConvertError(
                "--calibration takes ONNX sources; for torch modules use save_module(calibration=...)",
                rule="usage",
            )
        from .compress.outputs import onnx_outputs

        check_input(Path(calibration))
        outputs = onnx_outputs(model, Path(calibration), config.output_error == "per-output")
        return _calibrated(model, str(src_path), dst_path, config, outputs, None)
    if into == ".dcnn" and writer is not None and writer.write is not None:
        _check_paths(src_path, dst_path, force)
        start = time.perf_counter()
        writer.write(src_path, dst_path, {"external_data": external_data})
        with safe_open(src_path) as dcnn:
            infos = [dcnn.info(name) for name in dcnn.keys()]
        seconds = time.perf_counter() - start
        return ConversionReport(str(src_path), str(dst_path), infos, src_path.stat().st_size, seconds)
    readable = ", ".join(s for f in formats() if f.read for s in f.suffixes)
    writable = ", ".join(s for f in formats() if f.write for s in f.suffixes)
    raise ConvertError(
        f"cannot convert {into or 'no extension'} to {out or 'no extension'}: convert {readable} or a "
        f"model folder to .dcnn, or .dcnn to {writable} or a folder",
        rule="usage",
    )


def save_module(
    module: Any,
    dst: str | os.PathLike[str],
    config: CompressionConfig = SAFE,
    *,
    calibration: Iterable[Any] | None = None,
    force: bool = False,
    progress: bool = False,
) -> ConversionReport:
    """Compress a live ``torch.nn.Module`` into a .dcnn file (roles and conv/fc told from its
    layers).

    ``calibration``: sample inputs, each passed as ``module(item)`` (a tuple as
    ``module(*item)``); the module must return a tensor. With them k-means weighs each weight
    by what it does to the output, the output error is measured and reported, and with
    ``config.max_output_error`` (mean ||y - y0|| / ||y0|| over the items) each tensor's bits
    are searched for the smallest file within it.
    """
    from .formats.pytorch import read_module

    dst_path = Path(dst)
    _check_output(dst_path, force)
    model = read_module(module)
    if calibration is None:
        _no_target(config)
        return _to_dcnn(model, type(module).__name__, dst_path, config, progress)
    from .compress.outputs import ModuleOutputs

    outputs = ModuleOutputs(module, calibration)
    return _calibrated(model, type(module).__name__, dst_path, config, outputs, outputs)


def _no_target(config: CompressionConfig) -> None:
    if config.max_output_error is not None:
        raise ConvertError("an output-error target needs calibration data (--calibration)", rule="usage")


def _calibrated(
    model: ModelInput,
    source: str,
    dst: Path,
    config: CompressionConfig,
    outputs: Any,
    gradients: Any,
) -> ConversionReport:
    """Compress with calibration (see :mod:`converters.compress.calibrate`), then write."""
    from .compress.calibrate import calibrate

    start = time.perf_counter()
    weights = list(model.weights())
    # Embedding rows that the calibration items never look up get no gradient: that says
    # nothing of the held-out inputs that will, so tables are clustered unweighted.
    planned = [w.name for w in weights if plan_for(config, w) is not None and w.role != "embedding"]
    importance = gradients.importance(planned, seed=config.seed) if gradients is not None else None
    feedback = gradients is not None and config.error_feedback and config.max_output_error is not None
    hessians = gradients.input_hessians(planned) if feedback else None
    result = calibrate(
        weights,
        config,
        outputs.error,
        target=config.max_output_error,
        importance=importance,
        measurable=outputs.measurable,
        hessians=hessians,
    )
    chosen = (result.tensors[w.name] for w in weights)
    report = _write(model, source, dst, config, ((t.encoded, t.error) for t in chosen), start)
    report.output_error = result.error
    return report


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
    config: CompressionConfig,
    progress: bool,
    tasks: list[Task] | None = None,
    workers: int = 1,
    ray: bool = False,
) -> ConversionReport:
    """Compress ``tasks`` (default: the model's weights, in memory) into ``dst``, in order,
    by ``workers`` processes or Ray tasks (see :mod:`converters.parallel`)."""
    from tqdm import tqdm

    start = time.perf_counter()
    stats = WorkerStats()
    todo = tasks if tasks is not None else (InMemory(weight) for weight in model.weights())
    bar = tqdm(total=model.nbytes, unit="B", unit_scale=True, disable=not progress, leave=False)

    def results() -> Iterator[tuple[EncodedTensor, float]]:
        for result in compressed(todo, config, workers, ray=ray):
            stats.add(result)
            bar.set_postfix_str(result.name, refresh=False)
            bar.update(result.nbytes)
            yield result.encoded(), result.error

    with bar:
        report = _write(model, source, dst, config, results(), start)
    backend = "ray" if ray else "processes" if workers > 1 else "driver"
    report.workers = {"backend": backend, "workers": workers, "processes": stats.rows(), "tasks": stats.tasks}
    left_out = model.source.attributes.get("left_out")
    report.notes = [f"left out of the .dcnn: {left_out}"] if left_out else []
    return report


def _to_folder(src: Path, dst: Path, force: bool, single_file: bool) -> ConversionReport:
    start = time.perf_counter()
    with safe_open(src) as dcnn:
        bfloat16 = any(dcnn.info(name).dtype == "bfloat16" for name in dcnn.keys())
        source = dcnn.source()
    pytorch = source.format == SOURCE_FORMAT and source.attributes.get("kind") == "pytorch"
    with safe_open(src, framework="torch" if pytorch or bfloat16 else "numpy") as dcnn:
        stored = dcnn.get_tensor if dcnn.framework == "numpy" else _stored_bits(dcnn)
        written = write_folder(dcnn, dst, stored, force=force, single_file=single_file)
        infos = [dcnn.info(name) for name in dcnn.keys()]
    notes = [f"restored {len(written)} files: {', '.join(written)}"]
    if source.attributes.get("left_out"):
        notes.append(f"left out when converted: {source.attributes['left_out']}")
    seconds = time.perf_counter() - start
    return ConversionReport(str(src), str(dst), infos, src.stat().st_size, seconds, notes=notes)


def _stored_bits(dcnn: Any) -> Any:
    from .weight import from_torch

    return lambda name: from_torch(name, dcnn.get_tensor(name)).array


def _write(
    model: ModelInput,
    source: str,
    dst: Path,
    config: CompressionConfig,
    tensors: Iterable[tuple[EncodedTensor, float]],
    start: float,
) -> ConversionReport:
    """Write encoded tensors (with their errors) and the model's metadata and source."""
    settings = {"lossless": True} if model.lossless else config.to_dict()
    attributes = dict(model.source.attributes)
    if not model.lossless:
        attributes["compression"] = json.dumps(settings, sort_keys=True)
    origin = Source(model.source.format, model.source.skeleton, attributes)
    errors: dict[str, float] = {}
    with Writer(dst, metadata=model.metadata, source=origin) as writer:
        for encoded, error in tensors:
            record = writer.add_encoded(encoded)
            errors[record.name] = error
        lossy = {name: round(error, 6) for name, error in errors.items() if error}
        if lossy:  # what dcnn-inspect shows per layer
            writer.set_source_attribute("errors", json.dumps(lossy, separators=(",", ":")))
    with safe_open(dst) as dcnn:
        infos = [dcnn.info(name) for name in dcnn.keys()]
    seconds = time.perf_counter() - start
    return ConversionReport(source, str(dst), infos, dst.stat().st_size, seconds, errors, settings)
