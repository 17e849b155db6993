"""Write .dcnn files atomically, one tensor at a time, in bounded memory.

Sections go to a spool file as tensors are added; closing writes the preamble, the header
and the spool into the target through ``atomic.replacing``: a crash at any moment leaves
the target as it was (old file or none). The preamble declares the lowest minor version
whose features the file uses (1.0 unless a tensor needs 1.1 or 1.2), so older readers read the
rest. ``compact=True`` (the default) packs header tables and codebooks, drops the padding
before sections that need no alignment and zstd-compresses the header (format 1.2), each where
that is smaller; ``compact=False`` writes what a 1.1 writer wrote, byte for byte.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import numpy as np
import zstandard

from .. import dcnn_pb2 as pb
from ..encodings import DEFAULT_CHUNK_SIZE, SINCE_MINOR, EncodedTensor, compact, encode
from ..encodings.base import placed_sections
from ..errors import DcnnIOError, EncodeError
from ..layout import EXPANSION_SLACK, MAGIC, MAJOR, MAX_EXPANSION, MAX_HEADER_BYTES, PREAMBLE, align_up
from ..tensors import Narrow, Quantized, Raw, Source
from .atomic import replacing

PRODUCER = "dcnn 0.1.0"
_PARTIAL_SUFFIX = ".dcnn-partial"


class Writer:
    """Build a .dcnn file tensor by tensor; the file appears at ``path`` only on success.

    Use as a context manager: leaving it normally commits the file, an exception discards it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        metadata: Mapping[str, str] | None = None,
        source: Source | None = None,
        producer: str = PRODUCER,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        compact: bool = True,
    ) -> None:
        self.path = Path(path)
        self.chunk_size = chunk_size
        self.compact = compact
        self._minor = 0
        self._header = pb.Header(producer=producer)
        for key, value in (metadata or {}).items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise EncodeError("metadata keys and values must be strings")
            self._header.metadata[key] = value
        if source is not None:
            self._header.source.format = source.format
            skeleton = bytes(source.skeleton)
            packed = zstandard.ZstdCompressor(level=19, write_content_size=True).compress(skeleton)
            if skeleton and len(packed) < len(skeleton):  # format 1.1 (spec 3)
                self._header.source.skeleton_zstd = packed
                self._minor = 1
            else:
                self._header.source.skeleton = skeleton
            for key, value in source.attributes.items():
                self._header.source.attributes[key] = value
        self._names: set[str] = set()
        self._data_end = 0
        directory = self.path.parent if str(self.path.parent) else Path(".")
        if not directory.is_dir():
            raise DcnnIOError(f"no such directory: {directory}", path=str(self.path))
        _remove_stale_partials(self.path)
        try:
            fd, spool = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=_PARTIAL_SUFFIX, dir=directory)
        except OSError as exc:
            raise DcnnIOError(f"cannot write here: {exc.strerror}", path=str(self.path)) from exc
        self._spool_path = Path(spool)
        self._spool = os.fdopen(fd, "w+b")
        self._closed = False

    def add(self, name: str, tensor: Raw | Quantized | Narrow | np.ndarray) -> pb.Tensor:
        """Encode and append one tensor; returns its header record."""
        self._check_open(name)
        return self.add_encoded(encode(name, tensor, self.chunk_size))

    def add_encoded(self, encoded: EncodedTensor) -> pb.Tensor:
        """Append a tensor encoded by :func:`dcformat.encode` as it is (no second encoding);
        returns its header record."""
        if not isinstance(encoded, EncodedTensor):
            raise EncodeError(f"expected an EncodedTensor, got {type(encoded).__name__}")
        name = encoded.name
        self._check_open(name)
        record = encoded.record
        since = SINCE_MINOR.get(record.encoding, 0)
        if not self.compact and since > compact.SINCE_MINOR:
            raise EncodeError(f"tensor {name!r} needs format 1.{since}, whose layout is compact=True")
        self._minor = max(self._minor, since)
        if self.compact and compact.compact(record):
            self._minor = max(self._minor, compact.SINCE_MINOR)
        aligned = [a for _, a in placed_sections(record)]
        for (section, data), align in zip(encoded.payloads, aligned, strict=True):
            start = align_up(self._data_end) if align or not self.compact else self._data_end
            if start != align_up(self._data_end):  # a section without the 1.1 padding before it
                self._minor = max(self._minor, compact.SINCE_MINOR)
            self._spool.write(bytes(start - self._data_end))
            self._spool.write(data)
            section.offset = start
            self._data_end = start + len(data)
        self._names.add(name)
        self._header.tensors.append(encoded.record)
        return encoded.record

    def set_source_attribute(self, key: str, value: str) -> None:
        """Add or replace one attribute of the source (e.g. what was learnt while adding
        tensors); allowed until the file is committed."""
        if self._closed:
            raise EncodeError("the writer is closed")
        if not isinstance(key, str) or not isinstance(value, str):
            raise EncodeError("source attributes are strings")
        self._header.source.attributes[key] = value

    def _check_open(self, name: str) -> None:
        if self._closed:
            raise EncodeError("the writer is closed")
        if name in self._names:
            raise EncodeError(f"duplicate tensor name {name!r}")

    def commit(self) -> None:
        """Write the file at its path (atomically) and release the spool."""
        if self._closed:
            raise EncodeError("the writer is closed")
        header = self._header.SerializeToString(deterministic=True)
        if len(header) > MAX_HEADER_BYTES:
            self.abort()
            raise EncodeError(f"the header would take {len(header)} bytes; at most {MAX_HEADER_BYTES}")
        if self.compact and self._data_end:  # a compressed header needs sections (spec 3)
            packed = zstandard.ZstdCompressor(level=19, write_content_size=True).compress(header)
            wrapped = pb.Header(header_zstd=packed).SerializeToString(deterministic=True)
            if len(wrapped) < len(header) and len(header) <= MAX_EXPANSION * len(packed) + EXPANSION_SLACK:
                header, self._minor = wrapped, max(self._minor, compact.SINCE_MINOR)
        # the lowest minor version with every feature the file uses (spec 10)
        head = PREAMBLE.pack(MAGIC, MAJOR, self._minor, len(header), zlib.crc32(header), 0)
        head = head[:-4] + (zlib.crc32(head[:-4])).to_bytes(4, "little")
        head += header
        head += bytes(align_up(len(head)) - len(head))
        try:
            with replacing(self.path, _PARTIAL_SUFFIX) as tmp, open(tmp, "wb") as out:
                out.write(head)
                self._spool.flush()
                self._spool.seek(0)
                shutil.copyfileobj(self._spool, out, 1 << 20)
        except BaseException:
            self.abort()
            raise
        self._release()

    def abort(self) -> None:
        """Discard everything written so far; the target path is untouched."""
        if not self._closed:
            self._release()

    def _release(self) -> None:
        self._closed = True
        self._spool.close()
        with contextlib.suppress(OSError):
            os.unlink(self._spool_path)

    def __enter__(self) -> Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def save_file(
    tensors: Mapping[str, Raw | Quantized | Narrow | np.ndarray],
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, str] | None = None,
    source: Source | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    compact: bool = True,
) -> None:
    """Write tensors to a .dcnn file atomically (numpy arrays are stored exactly); ``compact`` as
    :class:`Writer`."""
    with Writer(path, metadata=metadata, source=source, chunk_size=chunk_size, compact=compact) as writer:
        for name, tensor in tensors.items():
            writer.add(name, tensor)


def _remove_stale_partials(path: Path) -> None:
    """Remove temporary files a killed writer of this same target left behind."""
    directory = path.parent if str(path.parent) else Path(".")
    for stale in directory.glob(f".{glob.escape(path.name)}.*{_PARTIAL_SUFFIX}"):
        with contextlib.suppress(OSError):
            stale.unlink()
