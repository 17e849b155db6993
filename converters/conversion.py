"""Convert models to and from .dcnn: the Python API behind dcnn-convert."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcformat import DcnnIOError, Source, TensorInfo, Writer, safe_open

from .compress.config import SAFE, CompressionConfig
from .compress.tensor import compress_weight
from .errors import ConvertError
from .formats import by_suffix, check_input, formats
from .formats.base import ModelInput
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
        }

    def table(self) -> str:
        return format_table(self.tensors, self.dcnn_bytes, self.errors)


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    config: CompressionConfig = SAFE,
    *,
    force: bool = False,
    progress: bool = False,
    external_data: bool | None = None,
    prototxt: str | os.PathLike[str] | None = None,
) -> ConversionReport:
    """Convert ``src`` to ``dst``, the direction told by the file extensions.

    To .dcnn from any readable format (.safetensors, .pt/.pth state_dicts, .onnx), compressed
    by ``config`` (default: the quality-safe :data:`converters.SAFE`), or from a Deep
    Compression release file (.net, with its deploy ``prototxt``) losslessly; from .dcnn to
    any writable format (.onnx only for a .dcnn made from ONNX; ``external_data`` None keeps
    the weights of models over 1 GiB in a ``.data`` file beside it). ``dst`` is written
    atomically and is not overwritten unless ``force``.
    """
    src_path, dst_path = Path(src), Path(dst)
    into, out = src_path.suffix.lower(), dst_path.suffix.lower()
    reader, writer = by_suffix(into), by_suffix(out)
    if out == ".dcnn" and reader is not None and reader.read is not None:
        _check_paths(src_path, dst_path, force)
        options = {} if prototxt is None else {"prototxt": Path(prototxt)}
        model = reader.read(src_path, **options)
        return _to_dcnn(model, str(src_path), dst_path, config, progress)
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
        f"cannot convert {into or 'no extension'} to {out or 'no extension'}: convert {readable} to "
        f".dcnn, or .dcnn to {writable}",
        rule="usage",
    )


def save_module(
    module: Any,
    dst: str | os.PathLike[str],
    config: CompressionConfig = SAFE,
    *,
    force: bool = False,
    progress: bool = False,
) -> ConversionReport:
    """Compress a live ``torch.nn.Module`` into a .dcnn file (conv/fc told from its layers)."""
    from .formats.pytorch import read_module

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
    model: ModelInput, source: str, dst: Path, config: CompressionConfig, progress: bool
) -> ConversionReport:
    from tqdm import tqdm

    start = time.perf_counter()
    settings = {"lossless": True} if model.lossless else config.to_dict()
    attributes = dict(model.source.attributes)
    if not model.lossless:
        attributes["compression"] = json.dumps(settings, sort_keys=True)
    origin = Source(model.source.format, model.source.skeleton, attributes)
    errors: dict[str, float] = {}
    bar = tqdm(total=model.nbytes, unit="B", unit_scale=True, disable=not progress, leave=False)
    with bar, Writer(dst, metadata=model.metadata, source=origin) as writer:
        for weight in model.weights():
            bar.set_postfix_str(weight.name, refresh=False)
            compressed = compress_weight(weight, config)
            writer.add_encoded(compressed.encoded)
            errors[weight.name] = compressed.error
            bar.update(weight.array.nbytes)
    with safe_open(dst) as dcnn:
        infos = [dcnn.info(name) for name in dcnn.keys()]
    seconds = time.perf_counter() - start
    return ConversionReport(source, str(dst), infos, dst.stat().st_size, seconds, errors, settings)
