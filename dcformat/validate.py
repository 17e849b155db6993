"""Check a file against every rule of the spec and report all problems found."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import DcnnError
from .header import sections_of
from .layout import PREAMBLE_SIZE, align_up
from .reader import DcnnFile


@dataclass(frozen=True)
class Problem:
    """One broken rule: its id (spec "Rules"), a message, and where."""

    rule: str
    message: str
    tensor: str | None = None
    offset: int | None = None

    def __str__(self) -> str:
        where = "".join(
            [
                f"tensor {self.tensor!r}: " if self.tensor else "",
                f"byte {self.offset}: " if self.offset is not None else "",
            ]
        )
        return f"{where}{self.message} [{self.rule}]"


@dataclass
class Report:
    path: str
    problems: list[Problem] = field(default_factory=list)
    tensors: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "ok": self.ok,
            "tensors": self.tensors,
            "problems": [asdict(p) for p in self.problems],
        }


def validate(path: str | os.PathLike[str]) -> Report:
    """Check the preamble, header, layout, padding and every tensor's data."""
    report = Report(os.fspath(path) if isinstance(path, str | os.PathLike) else repr(path))
    try:
        f = DcnnFile(path, verify=True)
    except DcnnError as exc:
        report.problems.append(_problem(exc))
        return report
    with f:
        report.tensors = len(f.keys())
        report.problems.extend(_padding_problems(f))
        for name in f.keys():
            try:
                f.get_tensor(name)
            except DcnnError as exc:
                report.problems.append(_problem(exc, name))
    return report


def _problem(exc: DcnnError, tensor: str | None = None) -> Problem:
    return Problem(exc.rule, exc.message, exc.tensor or tensor, exc.offset)


def _padding_problems(f: DcnnFile) -> list[Problem]:
    """Bytes between the header and the first section, and between sections, must be zero."""
    buf = np.frombuffer(f._map, dtype=np.uint8) if f._map is not None else np.zeros(0, np.uint8)
    gaps = [(PREAMBLE_SIZE + f.preamble.header_length, f.preamble.data_start)]
    end = 0
    for record in f.header.tensors:
        for section in sections_of(record):
            gaps.append((f.preamble.data_start + end, f.preamble.data_start + align_up(end)))
            end = section.offset + section.length
    problems = []
    for start, stop in gaps:
        nonzero = np.flatnonzero(buf[start:stop])
        if nonzero.size:
            problems.append(Problem("padding", "padding bytes are not zero", offset=start + int(nonzero[0])))
    del buf
    return problems
