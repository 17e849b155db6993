"""Read .dcnn files: map the file, check the header, decode only the tensors asked for."""

from __future__ import annotations

import copy
import mmap
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np

from .. import dcnn_pb2 as pb
from .. import dtypes, encodings
from ..codec import decode as codec
from ..codec.huffman import Stream
from ..encodings.base import numel_of
from ..errors import ChecksumError, DcnnError, DcnnIOError, FormatError, LimitError, ended_waived, fail
from ..layout import EXPANSION_SLACK, PREAMBLE_SIZE, align_up
from ..tensors import Codes, Source
from .header import (
    Preamble,
    check_layout,
    check_source,
    check_tensor,
    inflate_header,
    parse_header,
    read_preamble,
    sections_of,
)

FRAMEWORKS = ("numpy", "torch")
TINY = 1 << 14  # entries below which decoding a tensor costs about as much Python as native work


@dataclass(frozen=True)
class TensorInfo:
    """What the header says of one tensor; nothing is decoded to produce it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    encoding: str
    entries: int  # stored entries (codes, fillers included) or elements for RAW
    nonzeros: int
    weight_bits: int  # bits of a codebook index (ceil log2 K), or of a RAW element
    index_bits: int  # SPARSE_CODES only, else 0
    stored_bytes: int  # bytes of its sections

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def dense_bytes(self) -> int:
        return self.numel * dtypes.itemsize(self.dtype)


class DcnnFile:
    """An open .dcnn file (see :func:`safe_open`)."""

    def __init__(
        self, path: str | os.PathLike[str], framework: str = "numpy", verify: bool = True, threads: int = 1
    ) -> None:
        if framework not in FRAMEWORKS:
            raise DcnnError(f"framework must be one of {FRAMEWORKS}, not {framework!r}", rule="usage")
        if not isinstance(path, str | os.PathLike):
            raise DcnnError(f"path must be a str or os.PathLike, not {type(path).__name__}", rule="usage")
        self.path = os.fspath(path)
        self.framework = framework
        self.verify = verify
        self.threads = codec.check_threads(threads)
        # One thread drops each section's mapped pages once read (see _drop_pages); several do
        # not: each drop is a TLB shootdown on the other threads' CPUs, and with two threads it
        # made MiniLM's load 1.7x slower at the median (33 ms against 59), varying from run to run.
        self._drops_pages = self.threads == 1
        self.arena: codec.Arena | None = None  # where decoded values go (load_file's)
        self._map: mmap.mmap | None = None
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size:
                    self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise DcnnIOError(f"cannot open: {exc.strerror or exc}", path=self.path) from None
        try:
            self.size = size
            head = self._map[:PREAMBLE_SIZE] if self._map is not None else b""
            self.preamble: Preamble = read_preamble(head, size)
            self.header = inflate_header(
                parse_header(self._map[: self.preamble.data_start], self.preamble),
                self.preamble.minor,
            )
            self._skeleton = check_source(self.header.source, self.preamble.minor)
            self._tensors: dict[str, pb.Tensor] = {}
            expanded = [0]
            for record in self.header.tensors:
                if record.name in self._tensors:
                    fail(FormatError("duplicate tensor name", rule="tensor-name", tensor=record.name))
                try:
                    check_tensor(record, self.preamble.minor, expanded)
                except DcnnError as exc:
                    if ended_waived(exc):  # skip_rules of validate: the other tensors go on
                        continue
                    raise exc.located(tensor=record.name) from None
                self._tensors[record.name] = record
            self._padding_ends = check_layout(
                self.header, self.preamble.data_start, size, self.preamble.minor
            )
            _check_zero(self._map, PREAMBLE_SIZE + self.preamble.header_length, self.preamble.data_start)
        except DcnnError as exc:
            self.close()
            raise exc.located(path=self.path) from None

    # -- header queries -------------------------------------------------------------------

    def keys(self) -> list[str]:
        """Tensor names, in file order."""
        return list(self._tensors)

    def metadata(self) -> dict[str, str]:
        return dict(self.header.metadata)

    def source(self) -> Source:
        """The source record, its skeleton decompressed (checked when the file was opened)."""
        src = self.header.source
        return Source(src.format, self._skeleton, dict(src.attributes))

    @property
    def version(self) -> tuple[int, int]:
        return self.preamble.major, self.preamble.minor

    @property
    def producer(self) -> str:
        return self.header.producer

    def info(self, name: str) -> TensorInfo:
        t = self._record(name)
        encoding = encodings.of(t)
        entries, weight_bits = encoding.entries_and_bits(t)
        return TensorInfo(
            name=name,
            shape=tuple(t.shape),
            dtype=dtypes.from_enum(t.dtype),
            encoding=encoding.NAME,
            entries=entries,
            nonzeros=t.nonzeros,
            weight_bits=weight_bits,
            index_bits=t.index_bits,
            stored_bytes=sum(s.length for s in sections_of(t)),
        )

    # -- decoding ---------------------------------------------------------------------------

    def get_tensor(self, name: str, dtype: str | None = None, device: str | None = None) -> Any:
        """The dense tensor. ``dtype`` converts float tensors (float32, float16, bfloat16)."""
        record = self._record(name)
        try:
            kind = dtypes.from_enum(record.dtype)
            out_kind = kind if dtype is None else _checked_out_dtype(kind, dtype)
            return self._convert(self._decode_dense(record, out_kind), out_kind, device)
        except DcnnError as exc:
            raise exc.located(path=self.path, tensor=name) from None

    def get_sparse(self, name: str, layout: str = "csr") -> Any:
        """A 2-D sparse matrix (rank > 2 flattened to (shape[0], rest)) built from the
        positions: scipy.sparse for numpy, torch sparse for torch."""
        if layout not in ("csr", "coo"):
            raise DcnnError(f"layout must be 'csr' or 'coo', not {layout!r}", rule="usage")
        record = self._record(name)
        try:
            positions, stored, kind = self._decode_entries(record)
        except DcnnError as exc:
            raise exc.located(path=self.path, tensor=name) from None
        shape = tuple(record.shape)
        rows = shape[0] if len(shape) >= 2 else 1
        cols = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) >= 2 else numel_of(record)
        if cols == 0 and rows > EXPANSION_SLACK // 8:  # the row index of an empty matrix is all there is
            fail(
                LimitError(
                    f"an empty matrix of {rows} rows exceeds the expansion limit",
                    rule="expansion",
                    path=self.path,
                    tensor=name,
                )
            )
        row, col = np.divmod(positions, max(cols, 1))
        if self.framework == "torch":
            from ..interop import torch as interop_torch

            return interop_torch.sparse_matrix(row, col, stored, kind, (rows, cols), layout)
        from ..interop import scipy as interop_scipy

        return interop_scipy.sparse_matrix(row, col, stored, kind, (rows, cols), layout)

    def get_codes(self, name: str) -> Codes:
        """Codebook, codes and (sparse) positions of a coded tensor, without decoding values."""
        record = self._record(name)
        try:
            return encodings.of(record).codes(self, record)
        except DcnnError as exc:
            raise exc.located(path=self.path, tensor=name) from None

    # -- internals --------------------------------------------------------------------------

    def _record(self, name: str) -> pb.Tensor:
        try:
            return self._tensors[name]
        except (KeyError, TypeError):
            raise DcnnError(f"no tensor named {name!r}", rule="usage", path=self.path) from None

    def section(self, section: pb.Section) -> np.ndarray:
        """A copy of a section's bytes, its checksum verified."""
        return self._section_view(section).copy()

    def _section_view(self, section: pb.Section) -> np.ndarray:
        """A section's bytes, its checksum verified: a read-only view of the map, for data that is
        only read while decoding (a copy of a large stream costs as much as its checksum)."""
        if self._map is None:
            raise DcnnError("the file is closed", rule="usage", path=self.path)
        start = self.preamble.data_start + section.offset
        data = np.frombuffer(self._map, dtype=np.uint8, count=section.length, offset=start)
        if self.verify:
            if codec.crc32(data) != section.crc32:
                fail(ChecksumError("section checksum mismatch", rule="section-crc", offset=start))
            _check_zero(
                self._map,
                start + section.length,
                self.preamble.data_start + self._padding_ends[section.offset],
            )
        if self._drops_pages:
            _drop_pages(self._map, start, start + section.length)
        return data

    def stream(self, stream: pb.HuffmanStream) -> Stream:
        """A Huffman stream's section (checksum verified) and fields."""
        has_data = stream.HasField("data")
        return Stream(
            data=self._section_view(stream.data) if has_data else np.zeros(0, dtype=np.uint8),
            bit_length=stream.bit_length,
            count=stream.count,
            lengths=np.frombuffer(stream.code_lengths, dtype=np.uint8),
            chunk_size=stream.chunk_size,
            offsets=np.asarray(stream.chunk_offsets, dtype=np.uint64),
            origin=self.preamble.data_start + stream.data.offset if has_data else 0,
        )

    def symbols(self, stream: pb.HuffmanStream) -> np.ndarray:
        """A Huffman stream's decoded symbols."""
        return codec.decode_symbols(self.stream(stream), self.threads)

    def _decode_dense(self, record: pb.Tensor, out_kind: str) -> np.ndarray:
        """The tensor's values in the stored form of ``out_kind`` (bfloat16 as bits)."""
        out, nonzeros = encodings.of(record).decode(self, record, out_kind)
        if self.verify and nonzeros != record.nonzeros:
            fail(FormatError(f"{nonzeros} nonzeros decoded, {record.nonzeros} declared", rule="nonzeros"))
        return out.reshape(tuple(record.shape))

    def _decode_entries(self, record: pb.Tensor) -> tuple[np.ndarray, np.ndarray, str]:
        """Flat positions and stored-form values of the nonzero elements."""
        kind = dtypes.from_enum(record.dtype)
        entries = encodings.of(record).nonzero_entries(self, record)
        if entries is None:
            flat = self._decode_dense(record, kind).reshape(-1)
            positions = np.flatnonzero(dtypes.is_nonzero(flat, kind))
            return positions, flat[positions], kind
        return *entries, kind

    def _convert(self, array: np.ndarray, kind: str, device: str | None) -> Any:
        if self.framework == "numpy":
            if device is not None:
                raise DcnnError("device applies to framework='torch' only", rule="usage")
            return dtypes.bfloat16_to_float32(array) if kind == "bfloat16" else array
        from ..interop import torch as interop_torch

        return interop_torch.to_tensor(array, kind, device)

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a stream's view is still referenced (say, by an error's frames):
                pass  # the map goes when the view does
            self._map = None

    def __enter__(self) -> DcnnFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def safe_open(
    path: str | os.PathLike[str], framework: str = "numpy", verify: bool = True, threads: int = 1
) -> DcnnFile:
    """Open a .dcnn file; nothing is decoded until a tensor is asked for.

    ``verify`` (default on) checks each section's CRC-32 and declared counts as it is read.
    ``threads`` > 1 decodes the chunks of large streams on that many threads.
    """
    return DcnnFile(path, framework, verify, threads)


def load_file(
    path: str | os.PathLike[str],
    framework: str = "numpy",
    dtype: str | None = None,
    verify: bool = True,
    threads: int = 1,
    device: str | None = None,
) -> dict[str, Any]:
    """Every tensor of a .dcnn file, dense. ``dtype`` converts the float tensors (others come
    as stored); ``device`` places torch tensors (see DcnnFile.get_tensor). ``threads`` > 1
    decodes the largest tensors' chunks on that many threads, and the other tensors side by
    side; the tensors and errors are those of ``threads=1``.

    The coded tensors are decoded into one allocation (``codec.Arena``: huge pages where the
    system has them, a fault per 2 MiB), whose memory returns when the last of them is gone; to
    free tensors one by one, read them with ``safe_open``."""
    if dtype is not None and dtype not in dtypes.FLOAT_NAMES:
        raise DcnnError(f"dtype must be one of {dtypes.FLOAT_NAMES}, not {dtype!r}", rule="usage")
    with safe_open(path, framework, verify, threads) as f:
        names = f.keys()
        records = [f._record(name) for name in names]
        asked = {r.name: dtype if dtypes.from_enum(r.dtype) in dtypes.FLOAT_NAMES else None for r in records}

        def get(name: str, source: DcnnFile = f) -> Any:
            return source.get_tensor(name, dtype=asked[name], device=device)

        f.arena = _arena_for(sum(_output_bytes(r, asked[r.name]) for r in records))
        tensors = _get_in_parallel(f, names, get) if f.threads > 1 else {}
        return {name: tensors[name] if name in tensors else get(name) for name in names}


def _get_in_parallel(f: DcnnFile, names: list[str], get: Callable[..., Any]) -> dict[str, Any]:
    """``get(name)`` of every tensor on ``f.threads`` threads. The pool's threads decode the
    smaller tensors side by side, the tiny ones first and then largest first, one thread each
    (the native kernels release the GIL), while the caller decodes the tensors holding more than
    a ``2 * threads``-th of all entries, their chunks split between itself and whichever pool
    thread is free; then it joins in. Returns what was decoded; after an error, only the tensors
    before it in the order given, so that the caller, decoding the rest in file order, raises
    the error ``threads=1`` raises."""
    entries = {name: _entries(f._record(name)) for name in names}
    total = sum(entries.values())
    large = [name for name in names if entries[name] * 2 * f.threads > total]
    single = copy.copy(f)  # shares the map, decodes each tensor on one thread
    single.threads = 1
    # Tiny tensors first, while the caller is in the long native decodes of the large ones: their
    # decoding is mostly Python, which holds the GIL; then the rest, largest first, which the
    # caller joins in on, so that the threads finish close together.
    queue = sorted(
        (name for name in names if name not in large), key=lambda n: (entries[n] >= TINY, -entries[n])
    )
    done: dict[str, Any] = {}
    failed: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if failed or not queue:
                    return
                name = queue.pop(0)
            try:
                tensor = get(name, single)
            except Exception:  # raised again by the caller, decoding in file order
                with lock:
                    failed.append(name)
                return
            with lock:
                done[name] = tensor

    helpers = [codec.pool(f.threads).submit(worker) for _ in range(f.threads - 1)]
    for name in large:
        try:
            tensor = get(name)
        except Exception:  # raised again by the caller
            with lock:
                failed.append(name)
            break
        with lock:
            done[name] = tensor
    worker()
    for helper in helpers:  # one not started yet (the pool busy elsewhere) has nothing left to do
        if not helper.cancel():
            helper.result()
    if failed:
        first = min(names.index(name) for name in failed)
        return {name: done[name] for name in names[:first] if name in done}
    return done


def _arena_for(size: int) -> codec.Arena | None:
    """An arena of ``size`` bytes (address space: only the pieces written take memory), or None
    where the system refuses to map that much at once; the tensors then allocate one by one."""
    try:
        return codec.Arena(size)
    except MemoryError:
        return None


def _entries(record: pb.Tensor) -> int:
    """A tensor's stored entries (TensorInfo.entries, without building the info)."""
    return encodings.of(record).entries_and_bits(record)[0]


def _output_bytes(record: pb.Tensor, dtype: str | None) -> int:
    """The bytes of a tensor's decoded values (in ``dtype``'s stored form, or its own dtype's),
    rounded up as the arena places them."""
    size = numel_of(record) * dtypes.storage(dtype or dtypes.from_enum(record.dtype)).itemsize
    return align_up(size, codec.Arena.ALIGN)


def _drop_pages(buffer: mmap.mmap, start: int, stop: int) -> None:
    """Let the kernel drop the mapped file pages of bytes start:stop, now copied out, so a
    decode's resident memory does not grow with the file (read-only file pages: they come
    back from the page cache if read again). Where madvise is missing it does nothing."""
    if stop - start >= mmap.PAGESIZE and hasattr(buffer, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        first = start - start % mmap.PAGESIZE
        buffer.madvise(mmap.MADV_DONTNEED, first, min(stop, len(buffer)) - first)


def _check_zero(buffer: mmap.mmap | None, start: int, stop: int) -> None:
    """Padding bytes in [start, stop) must be zero."""
    if buffer is None or stop <= start:
        return
    nonzero = np.flatnonzero(np.frombuffer(buffer, dtype=np.uint8, count=stop - start, offset=start))
    if nonzero.size:
        fail(FormatError("padding bytes are not zero", rule="padding", offset=start + int(nonzero[0])))


def _checked_out_dtype(kind: str, dtype: str) -> str:
    if dtype not in dtypes.FLOAT_NAMES or kind not in dtypes.FLOAT_NAMES:
        raise DcnnError(
            f"cannot convert {kind} to {dtype!r}: dtype= converts float tensors "
            f"to one of {dtypes.FLOAT_NAMES}",
            rule="usage",
        )
    return dtype
