"""A schema-free parser for protobuf text format, enough for Caffe prototxt files.

A message parses to a dict mapping each field name to the list of its values in file order
(the parser cannot tell repeated fields from singular ones without a schema). Values are
``str`` (quoted strings), ``Ident`` (bare identifiers: enum names), ``int``, ``float``,
``bool`` and nested messages (dicts).
"""

from __future__ import annotations

import math
import re
from typing import Any, Union

from converters.formats.caffe_release.release import CaffeImportError

Value = Union[str, int, float, bool, "Message"]
Message = dict[str, list[Value]]


class Ident(str):
    """A bare identifier value (an enum name such as ``MAX`` or ``CONVOLUTION``)."""

    __slots__ = ()


_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\n\f\v]+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>(?:0[xX][0-9a-fA-F]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[fF]?)
        (?![A-Za-z0-9_.]))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[{}<>:\[\],;\-])
    """,
    re.VERBOSE,
)
_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {
    b"n": b"\n", b"t": b"\t", b"r": b"\r", b"a": b"\a", b"b": b"\b", b"f": b"\f",
    b"v": b"\v", b"\\": b"\\", b"'": b"'", b'"': b'"', b"?": b"?",
}  # fmt: skip
_SPECIAL_FLOATS = {"inf": math.inf, "infinity": math.inf, "nan": math.nan}
_CLOSE = {"{": "}", "<": ">"}


def _unescape(literal: str, where: str) -> str:
    def one(m: re.Match[bytes]) -> bytes:
        esc = m.group(1)
        if esc[:1] in b"xX":
            return bytes([int(esc[1:], 16)])
        if esc[:1].isdigit():
            return bytes([int(esc, 8) & 0xFF])
        if esc in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[esc]
        raise CaffeImportError(f"{where}: unknown escape \\{esc.decode(errors='replace')}")

    raw = _ESCAPE.sub(one, literal[1:-1].encode())
    try:
        return raw.decode()
    except UnicodeDecodeError as e:
        raise CaffeImportError(f"{where}: string is not valid UTF-8") from e


def _number(text: str) -> int | float:
    if text[:2] in ("0x", "0X"):
        return int(text, 16)
    if text[-1] in "fF":
        return float(text[:-1])
    if any(c in text for c in ".eE"):
        return float(text)
    return int(text)


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.tokens: list[tuple[str, str, int, int]] = []
        line, line_start = 1, 0
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                raise CaffeImportError(
                    f"{source}:{line}:{pos - line_start + 1}: unexpected character {text[pos]!r}"
                )
            kind = m.lastgroup
            assert kind is not None
            if kind != "space":
                self.tokens.append((kind, m.group(), line, pos - line_start + 1))
            newlines = m.group().count("\n")
            if newlines:
                line += newlines
                line_start = m.start() + m.group().rindex("\n") + 1
            pos = m.end()
        self.i = 0

    def where(self) -> str:
        if self.i < len(self.tokens):
            _, text, line, col = self.tokens[self.i]
            return f"{self.source}:{line}:{col} (at {text!r})"
        return f"{self.source}: end of input"

    def peek(self) -> str | None:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else None

    def next(self) -> tuple[str, str]:
        if self.i >= len(self.tokens):
            raise CaffeImportError(f"{self.where()}: unexpected end of input")
        kind, text, _, _ = self.tokens[self.i]
        self.i += 1
        return kind, text

    def expect(self, text: str) -> None:
        if self.peek() != text:
            raise CaffeImportError(f"{self.where()}: expected {text!r}")
        self.i += 1

    def message(self, close: str | None) -> Message:
        msg: Message = {}
        while self.peek() != close:
            if self.peek() is None:
                raise CaffeImportError(f"{self.where()}: expected {close!r}")
            kind, name = self.next()
            if kind != "ident":
                self.i -= 1
                raise CaffeImportError(f"{self.where()}: expected a field name")
            values = msg.setdefault(name, [])
            if self.peek() == ":":
                self.i += 1
                if self.peek() == "[":
                    self.i += 1
                    while self.peek() != "]":
                        values.append(self.value())
                        if self.peek() != "]":
                            self.expect(",")
                    self.i += 1
                else:
                    values.append(self.value())
            elif self.peek() in _CLOSE:
                values.append(self.value())
            else:
                raise CaffeImportError(f"{self.where()}: expected ':' or '{{' after {name!r}")
            if self.peek() in (",", ";"):
                self.i += 1
        if close is not None:
            self.i += 1
        return msg

    def value(self) -> Value:
        where = self.where()
        kind, text = self.next()
        if text in _CLOSE:
            return self.message(_CLOSE[text])
        if kind == "string":
            parts = [_unescape(text, where)]
            while self.i < len(self.tokens) and self.tokens[self.i][0] == "string":
                here = self.where()
                parts.append(_unescape(self.next()[1], here))
            return "".join(parts)
        if kind == "number":
            return _number(text)
        if text == "-":
            kind, text = self.next()
            if kind == "number":
                return -_number(text)
            if text.lower() in _SPECIAL_FLOATS:
                return -_SPECIAL_FLOATS[text.lower()]
            raise CaffeImportError(f"{where}: expected a number after '-'")
        if kind == "ident":
            if text in ("true", "True"):
                return True
            if text in ("false", "False"):
                return False
            if text.lower() in _SPECIAL_FLOATS:
                return _SPECIAL_FLOATS[text.lower()]
            return Ident(text)
        raise CaffeImportError(f"{where}: expected a value")


def parse(text: str, source: str = "<prototxt>") -> Message:
    """Parse protobuf text format; errors are ``CaffeImportError`` with ``source:line:col``."""
    return _Parser(text, source).message(None)


def one(msg: Message, field: str, default: Any = None) -> Any:
    """The single value of a singular field, or ``default`` when absent."""
    values = msg.get(field, [])
    if len(values) > 1:
        raise CaffeImportError(f"field {field!r} given {len(values)} times")
    return values[0] if values else default


def many(msg: Message, field: str) -> list[Value]:
    """All values of a (repeated) field, in file order."""
    return msg.get(field, [])
