"""What the fuzzer and the mutation tests do with each input.

Every input is tried twice: as given, and with its checksums repaired (preamble, header
and section CRC-32s recomputed) so that mutations get past the checksums to the deep
checks. For each, ``exercise`` opens the file and reads everything through the public API;
anything other than correct data or a DcnnError is a crash, and so is a reader that
accepts what ``validate`` rejects (or the reverse).
"""

from __future__ import annotations

import os
import random
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

import dcformat
from dcformat import dcnn_pb2 as pb
from dcformat.file.header import inflate_header, sections_of
from dcformat.layout import MAGIC, MINOR, PREAMBLE, PREAMBLE_SIZE, align_up

FLOATS = ("float32", "float16", "bfloat16", "float64")


def exercise(path: str | os.PathLike[str], frameworks: tuple[str, ...] = ("numpy",)) -> bool:
    """Read everything in a file through the public API, with and without verification;
    True when the file is valid.

    Raises AssertionError when the reader and the validator disagree or a valid file reads
    inconsistently; any exception that is not a DcnnError escapes.
    """
    report = dcformat.validate(path)
    for framework in frameworks:
        verified = _read_all(path, framework, verify=True)
        assert (verified is not None) == report.ok, (
            f"reader: {verified is not None}, validate: {report.problems}"
        )
        unverified = _read_all(path, framework, verify=False)
        if verified is not None:
            assert unverified is not None and verified.keys() == unverified.keys()
            for name, array in verified.items():
                assert np.array_equal(_numpy(array), _numpy(unverified[name]), equal_nan=True), name
        for threads in (1, 2):  # load_file decodes into one arena, on threads: the same arrays
            loaded = _load_all(path, framework, threads)
            if verified is not None:
                assert loaded is not None and loaded.keys() == verified.keys()
                for name, array in verified.items():
                    assert np.array_equal(_numpy(array), _numpy(loaded[name]), equal_nan=True), name
    return report.ok


def _load_all(path: str | os.PathLike[str], framework: str, threads: int) -> dict | None:
    """``load_file``'s tensors; None on a DcnnError."""
    try:
        return dcformat.load_file(path, framework=framework, threads=threads)
    except dcformat.DcnnError:
        return None


def _read_all(path: str | os.PathLike[str], framework: str, verify: bool) -> dict | None:
    """Every tensor of the file, dense, after exercising the rest of the API; None on a DcnnError."""
    out = {}
    try:
        with dcformat.safe_open(path, framework=framework, verify=verify) as f:
            f.metadata(), f.source(), f.version, f.producer
            for name in f.keys():
                info = f.info(name)
                out[name] = f.get_tensor(name)
                assert tuple(out[name].shape) == info.shape and _numpy(out[name]).size == info.numel, name
                if info.dtype in FLOATS:
                    f.get_tensor(name, dtype="float16")
                try:
                    f.get_codes(name)
                except dcformat.DcnnError as exc:
                    if exc.rule != "usage":  # a broken file
                        raise
                    assert "no codes" in exc.message, exc  # an encoding without codes (RAW)
                try:
                    matrix = f.get_sparse(name, layout="coo" if framework == "torch" else "csr")
                except dcformat.LimitError as exc:  # a huge empty matrix; its file can be valid
                    assert exc.rule == "expansion" and info.numel == 0, exc
                    continue
                nnz = matrix._nnz() if framework == "torch" else matrix.nnz
                assert not verify or nnz == info.nonzeros, name
    except dcformat.DcnnError:
        return None
    return out


def _numpy(array: object) -> np.ndarray:
    if isinstance(array, np.ndarray):
        return array
    return array.float().numpy()  # a torch tensor (bfloat16 has no numpy dtype)


def split_file(data: bytes) -> tuple[bytes, bytes, bytes]:
    """Preamble, header bytes and data area, as the preamble's header_length places them."""
    header_length = PREAMBLE.unpack_from(data)[3]
    end = PREAMBLE_SIZE + header_length
    return data[:PREAMBLE_SIZE], data[PREAMBLE_SIZE:end], data[align_up(end) :]


def parse_header(raw: bytes) -> pb.Header | None:
    """The header, a compressed one (1.2) decompressed where it can be; None if it does not parse."""
    header = pb.Header()
    try:
        header.ParseFromString(raw)
    except (DecodeError, ValueError, RuntimeError):
        return None
    try:
        return inflate_header(header, MINOR)
    except dcformat.DcnnError:
        return header


def assemble(preamble: bytes, header: bytes | pb.Header, data_area: bytes) -> bytes:
    """A file with matching checksums from a preamble (its version fields are kept), a header
    and a data area. A parsed header gets its section CRCs recomputed over the data area."""
    if isinstance(header, pb.Header):
        for tensor in header.tensors:
            for section in sections_of(tensor):
                section.crc32 = zlib.crc32(data_area[section.offset : section.offset + section.length])
        header = header.SerializeToString()
    _, major, minor, _, _, _ = PREAMBLE.unpack_from(preamble)
    head = PREAMBLE.pack(MAGIC, major, minor, len(header), zlib.crc32(header), 0)[:-4]
    head += zlib.crc32(head).to_bytes(4, "little") + header
    return head + bytes(align_up(len(head)) - len(head)) + data_area


def repair_checksums(data: bytes) -> bytes | None:
    """The file with every checksum made to match, or None without magic and preamble.

    A header that parses is re-serialized with its section CRCs recomputed; the data
    area is kept as it is.
    """
    if len(data) < PREAMBLE_SIZE or not data.startswith(MAGIC):
        return None
    preamble, raw, area = split_file(data)
    header = parse_header(raw)
    return assemble(preamble, raw if header is None else header, area)


INTERESTING = [0, 1, 2, 3, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 255, 256, 4095, 4096, 4097]
INTERESTING += [2**k + d for k in (16, 20, 31, 32, 56, 63) for d in (-1, 0, 1)] + [2**64 - 1]
_LIMITS = {
    FieldDescriptor.TYPE_UINT64: 2**64,
    FieldDescriptor.TYPE_UINT32: 2**32,
    FieldDescriptor.TYPE_ENUM: 2**31,
}


def mutate_header(header: pb.Header, rng: random.Random) -> None:
    """Change one thing in a header: a number, a list, a byte string, a name, the presence
    of a sub-message, or the tensor list; values favour limits and their neighbours."""
    fields = list(_fields(header))
    if not header.tensors or rng.random() < 0.1:
        _mutate_tensor_list(header, rng)
        return
    message, field = rng.choice(fields)
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        if not field.is_repeated:
            if message.HasField(field.name):
                message.ClearField(field.name)
            else:
                getattr(message, field.name).SetInParent()
        return
    if kind in _LIMITS:
        limit = _LIMITS[kind]
        if field.is_repeated:
            values = list(getattr(message, field.name))
            _mutate_list(values, rng, lambda: _number(rng, limit, rng.choice(values) if values else 0))
            message.ClearField(field.name)
            getattr(message, field.name).extend(values)
        else:
            value = _number(rng, limit, getattr(message, field.name))
            if kind == FieldDescriptor.TYPE_ENUM and rng.random() < 0.3:
                value = -value
            setattr(message, field.name, value)
    elif kind == FieldDescriptor.TYPE_BYTES:
        data = bytearray(getattr(message, field.name))
        _mutate_list(data, rng, lambda: rng.choice([0, 1, 2, 15, 16, 17, 128, 255]))
        setattr(message, field.name, bytes(data))
    elif kind == FieldDescriptor.TYPE_STRING and message is not header:
        names = [t.name for t in header.tensors]
        setattr(message, field.name, rng.choice(["", "x" * 4097, "é" * 2049, *names]))


def mutate_file(data: bytes, rng: random.Random) -> bytes | None:
    """A header mutation of a file with checksums that match; None when its header does not parse."""
    if len(data) < PREAMBLE_SIZE or not data.startswith(MAGIC):
        return None
    preamble, raw, area = split_file(data)
    header = parse_header(raw)
    if header is None:
        return None
    mutate_header(header, rng)
    return assemble(preamble, header, area)


def _fields(message: Message) -> Iterator[tuple[Message, FieldDescriptor]]:
    """Every (message, field) of the tensor records, depth first (present sub-messages only)."""
    for field in message.DESCRIPTOR.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            continue
        yield message, field
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if field.is_repeated:
            for item in getattr(message, field.name):
                yield from _fields(item)
        elif message.HasField(field.name):
            yield from _fields(getattr(message, field.name))


def _number(rng: random.Random, limit: int, current: int) -> int:
    choice = rng.random()
    if choice < 0.6:
        value = rng.choice(INTERESTING)
    elif choice < 0.9:
        value = current + rng.choice([-2, -1, 1, 2, 8, 64])
    else:
        value = rng.randrange(limit)
    return value % limit


def _mutate_list(values: list | bytearray, rng: random.Random, new: Callable[[], int]) -> None:
    choice = rng.randrange(5)
    if choice == 0 or not values:
        values.insert(rng.randint(0, len(values)), new())
    elif choice == 1:
        del values[rng.randrange(len(values))]
    elif choice == 2:
        values[rng.randrange(len(values))] = new()
    elif choice == 3:
        values.reverse()
    else:
        i, j = rng.randrange(len(values)), rng.randrange(len(values))
        values[i], values[j] = values[j], values[i]


def _mutate_tensor_list(header: pb.Header, rng: random.Random) -> None:
    tensors = list(header.tensors)
    choice = rng.randrange(3)
    if choice == 0 and tensors:
        tensors.insert(rng.randint(0, len(tensors)), rng.choice(tensors))
    elif choice == 1 and tensors:
        del tensors[rng.randrange(len(tensors))]
    else:
        rng.shuffle(tensors)
    copies = [pb.Tensor.FromString(t.SerializeToString()) for t in tensors]
    header.ClearField("tensors")
    header.tensors.extend(copies)


class Target:
    """Writes each input to a scratch file (in /dev/shm when there is one), exercises it and
    removes the file again (libFuzzer ends the process without running Python's exit hooks)."""

    def __init__(self, frameworks: tuple[str, ...] = ("numpy",)) -> None:
        scratch = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
        self.path = scratch / f"dcnn-fuzz-{os.getpid()}.dcnn"
        self.frameworks = frameworks

    def __call__(self, data: bytes) -> None:
        for variant in (data, repair_checksums(data)):
            if variant is not None:
                self.path.write_bytes(variant)
                try:
                    exercise(self.path, self.frameworks)
                finally:
                    self.path.unlink()
