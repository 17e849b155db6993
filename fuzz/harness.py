"""What the fuzzer and the mutation tests do with each input.

Every input is tried twice: as given, and with its checksums repaired (preamble, header
and section CRC-32s recomputed) so that mutations get past the checksums to the deep
checks. For each, ``exercise`` opens the file and reads everything through the public API;
anything other than correct data or a DcnnError is a crash, and so is a reader that
accepts what ``validate`` rejects (or the reverse).
"""

from __future__ import annotations

import os
import tempfile
import zlib
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

import dcformat
from dcformat import dcnn_pb2 as pb
from dcformat.header import sections_of
from dcformat.layout import MAGIC, PREAMBLE, PREAMBLE_SIZE, align_up

FLOATS = ("float32", "float16", "bfloat16", "float64")


def exercise(path: str | os.PathLike[str], frameworks: tuple[str, ...] = ("numpy",)) -> bool:
    """Read everything in a file through the public API, with and without verification;
    True when the file is valid.

    Raises AssertionError when the reader and the validator disagree or a valid file reads
    inconsistently; any exception that is not a DcnnError escapes.
    """
    report = dcformat.validate(path)
    # Padding is checked by validate only; every other problem must surface on a verified read.
    deep = [p for p in report.problems if p.rule != "padding"]
    for framework in frameworks:
        verified = _read_all(path, framework, verify=True)
        assert (verified is not None) == (not deep), (
            f"reader: {verified is not None}, validate: {report.problems}"
        )
        unverified = _read_all(path, framework, verify=False)
        if verified is not None:
            assert unverified is not None and verified.keys() == unverified.keys()
            for name, array in verified.items():
                assert np.array_equal(_numpy(array), _numpy(unverified[name]), equal_nan=True), name
    return report.ok


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
                if info.encoding != "RAW":
                    f.get_codes(name)
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


def repair_checksums(data: bytes) -> bytes | None:
    """The file with every checksum made to match, or None when its structure is too broken.

    A header that parses is re-serialized with its section CRCs recomputed over the bytes
    they cover; the data area is kept as it is.
    """
    if len(data) < PREAMBLE_SIZE or not data.startswith(MAGIC):
        return None
    _, major, minor, header_length, _, _ = PREAMBLE.unpack_from(data)
    raw_header = data[PREAMBLE_SIZE : PREAMBLE_SIZE + header_length]
    header = pb.Header()
    try:
        header.ParseFromString(raw_header)
    except (DecodeError, ValueError, RuntimeError):
        return with_header(data[:PREAMBLE_SIZE], raw_header, data[align_up(PREAMBLE_SIZE + header_length) :])
    data_area = data[align_up(PREAMBLE_SIZE + header_length) :]
    for tensor in header.tensors:
        for section in sections_of(tensor):
            if section.offset <= len(data_area):
                section.crc32 = zlib.crc32(data_area[section.offset : section.offset + section.length])
    preamble = PREAMBLE.pack(MAGIC, major, minor, 0, 0, 0)
    return with_header(preamble, header.SerializeToString(), data_area)


def with_header(preamble: bytes, header: bytes, data_area: bytes) -> bytes:
    """A file from a preamble (its version fields are kept), header bytes and a data area;
    header_length and both CRCs are set, the header padded with zeros to 64."""
    _, major, minor, _, _, _ = PREAMBLE.unpack_from(preamble)
    head = PREAMBLE.pack(MAGIC, major, minor, len(header), zlib.crc32(header), 0)[:-4]
    head += zlib.crc32(head).to_bytes(4, "little") + header
    return head + bytes(align_up(len(head)) - len(head)) + data_area


class Target:
    """Writes each input to one scratch file (in /dev/shm when there is one) and exercises it."""

    def __init__(self, frameworks: tuple[str, ...] = ("numpy",)) -> None:
        scratch = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, self.path = tempfile.mkstemp(suffix=".dcnn", dir=scratch)
        os.close(fd)
        self.frameworks = frameworks

    def __call__(self, data: bytes) -> None:
        for variant in (data, repair_checksums(data)):
            if variant is not None:
                Path(self.path).write_bytes(variant)
                exercise(self.path, self.frameworks)

    def close(self) -> None:
        os.unlink(self.path)
