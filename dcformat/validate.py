"""Check a file against every rule of the spec and report all problems found."""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import asdict, dataclass, field

from .errors import DcnnError, ended_waived, waiving
from .file.reader import DcnnFile


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


def validate(path: str | os.PathLike[str], *, skip_rules: Collection[str] = ()) -> Report:
    """Check the preamble, header, layout, padding and every tensor's data; collect all problems.

    ``skip_rules`` (internal: the one-rule conformance test) switches off every check of these
    rule ids, so that what a file breaks besides them shows."""
    with waiving(skip_rules):
        return _validate(path)


def _validate(path: str | os.PathLike[str]) -> Report:
    report = Report(os.fspath(path) if isinstance(path, str | os.PathLike) else repr(path))
    try:
        f = DcnnFile(path, verify=True)
    except DcnnError as exc:
        if not ended_waived(exc):
            report.problems.append(_problem(exc))
        return report
    with f:
        report.tensors = len(f.keys())
        for name in f.keys():
            try:
                f.get_tensor(name)
            except DcnnError as exc:
                if not ended_waived(exc):
                    report.problems.append(_problem(exc, name))
    return report


def _problem(exc: DcnnError, tensor: str | None = None) -> Problem:
    return Problem(exc.rule, exc.message, exc.tensor or tensor, exc.offset)
