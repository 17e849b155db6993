"""The one error hierarchy of dcformat: everything it raises on bad input is a DcnnError."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import NoReturn

# Rules whose checks are switched off (``validate(skip_rules=...)``): the conformance test uses
# it to show each invalid vector breaks one rule (spec 11.1). Empty in every other use.
_WAIVED: ContextVar[frozenset[str]] = ContextVar("dcnn_waived_rules", default=frozenset())


class DcnnError(Exception):
    """Root of every error dcformat raises for bad input, files or arguments.

    ``rule`` names the spec rule that was broken (see spec/dcnn-format.md, "Rules");
    ``path``, ``tensor`` and ``offset`` locate the problem when known.
    """

    rule = "error"
    ends = False  # raised by :func:`stop`: nothing after the check can be read

    def __init__(
        self,
        message: str,
        *,
        rule: str | None = None,
        path: str | None = None,
        tensor: str | None = None,
        offset: int | None = None,
    ) -> None:
        self.message = message
        if rule is not None:
            self.rule = rule
        self.path = path
        self.tensor = tensor
        self.offset = offset
        super().__init__(self._text())

    def _text(self) -> str:
        where = []
        if self.path is not None:
            where.append(str(self.path))
        if self.tensor is not None:
            where.append(f"tensor {self.tensor!r}")
        if self.offset is not None:
            where.append(f"byte {self.offset}")
        prefix = ": ".join(where)
        return f"{prefix}: {self.message} [{self.rule}]" if prefix else f"{self.message} [{self.rule}]"

    def located(self, *, path: str | None = None, tensor: str | None = None) -> DcnnError:
        """Return this error with its location filled in where it was unknown."""
        if path is not None and self.path is None:
            self.path = path
        if tensor is not None and self.tensor is None:
            self.tensor = tensor
        self.args = (self._text(),)
        return self


class FormatError(DcnnError):
    """The file breaks a rule of the format spec."""


class ChecksumError(FormatError):
    """A checksum does not match: the file is corrupted."""


class VersionError(FormatError):
    """The file's major version is not one this reader implements."""


class LimitError(FormatError):
    """The file exceeds a reader limit (sizes, counts, expansion)."""


class EncodeError(DcnnError, ValueError):
    """A tensor given to the writer cannot be encoded as asked."""


class DcnnIOError(DcnnError, OSError):
    """The file cannot be opened, read or written."""


def fail(error: DcnnError) -> None:
    """Raise ``error``: a broken rule. Only while its rule is waived (:func:`waiving`) does the
    check pass instead, and the code after it runs as if the rule held."""
    if error.rule not in _WAIVED.get():
        raise error from None


def stop(error: DcnnError) -> NoReturn:
    """Raise ``error``, waived or not: a check that nothing after it can be read past (spec
    11.1, "ends"). A waived one ends the checks of its tensor, or of the file, unreported."""
    error.ends = True
    raise error from None


def ended_waived(error: DcnnError) -> bool:
    """Whether ``error`` is a waived check that ended its tensor's or file's checks (:func:`stop`)."""
    return error.ends and error.rule in _WAIVED.get()


@contextmanager
def waiving(rules: Collection[str]) -> Iterator[None]:
    """Switch off every check of these rules (for the one-rule conformance test, spec 11.1)."""
    token = _WAIVED.set(frozenset(rules))
    try:
        yield
    finally:
        _WAIVED.reset(token)
