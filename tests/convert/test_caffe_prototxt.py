"""The schema-free protobuf text-format parser used for Caffe prototxt files."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from converters.formats.caffe_release.prototxt import Ident, many, one, parse
from converters.formats.caffe_release.release import CaffeImportError


def test_scalars() -> None:
    msg = parse(
        """
        s: "a\\"b\\n\\x41\\101" t: 'it''s' u: "con" 'cat'
        i: 42 neg: -7 hex: 0x1F
        f: 0.5 e: 1e-4 g: -2.5E+3 h: .25 dot: 5. suffix: 1.5f
        yes: true no: false
        inf: inf ninf: -inf nan: nan
        pool: MAX
        """
    )
    assert msg["s"] == ['a"b\nAA']
    assert msg["t"] == ["its"]
    assert msg["u"] == ["concat"]
    assert (msg["i"], msg["neg"], msg["hex"]) == ([42], [-7], [31])
    assert all(type(msg[k][0]) is int for k in ("i", "neg", "hex"))
    assert (msg["f"], msg["e"], msg["g"], msg["h"]) == ([0.5], [1e-4], [-2500.0], [0.25])
    assert (msg["dot"], msg["suffix"]) == ([5.0], [1.5])
    assert all(type(msg[k][0]) is float for k in ("f", "e", "dot", "suffix"))
    assert msg["yes"] == [True] and msg["no"] == [False]
    assert msg["inf"] == [math.inf] and msg["ninf"] == [-math.inf] and math.isnan(msg["nan"][0])
    assert msg["pool"] == ["MAX"] and isinstance(msg["pool"][0], Ident)
    assert not isinstance(msg["s"][0], Ident)


def test_nesting_repeated_fields_and_syntax_variants() -> None:
    msg = parse(
        """
        # a comment line
        name: "net"  # trailing comment with "quotes" and { braces
        layer { name: "a" bottom: "x" bottom: "y"; top: "z", }
        layer: { name: "b" param < lr_mult: 1 > param { lr_mult: 2 } }
        kernel_size: [3, 5]
        shape: [{ dim: 1 }, { dim: 2 }]
        empty {}
        """
    )
    assert msg["name"] == ["net"]
    a, b = msg["layer"]
    assert a == {"name": ["a"], "bottom": ["x", "y"], "top": ["z"]}
    assert b == {"name": ["b"], "param": [{"lr_mult": [1]}, {"lr_mult": [2]}]}
    assert msg["kernel_size"] == [3, 5]
    assert msg["shape"] == [{"dim": [1]}, {"dim": [2]}]
    assert msg["empty"] == [{}]


def test_accessors() -> None:
    msg = parse("a: 1 b: 2 b: 3")
    assert one(msg, "a") == 1
    assert one(msg, "missing", 7) == 7
    assert many(msg, "b") == [2, 3]
    assert many(msg, "missing") == []
    with pytest.raises(CaffeImportError, match="'b' given 2 times"):
        one(msg, "b")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('a: "unterminated', r"net.prototxt:1:4: unexpected character '\"'"),
        ("layer {\n  name: 1\n", r"net.prototxt: end of input: expected '}'"),
        ("a: 1 }", r"net.prototxt:1:6 \(at '}'\): expected a field name"),
        ("a 1", r"net.prototxt:1:3 \(at '1'\): expected ':' or '\{' after 'a'"),
        ("a:\n\n  :", r"net.prototxt:3:3 \(at ':'\): expected a value"),
        ("a: 3x3", r"net.prototxt:1:4: unexpected character '3'"),
        ("a: - b", r"net.prototxt:1:4 \(at '-'\): expected a number after '-'"),
        ("a: [1 2]", r"net.prototxt:1:7 \(at '2'\): expected ','"),
        ("a:", r"net.prototxt: end of input: unexpected end of input"),
        ('a: "\\q"', r"net.prototxt:1:4 \(at '\"\\\\q\"'\): unknown escape \\q"),
        ('a: "\\xff"', r"net.prototxt:1:4 .*: string is not valid UTF-8"),
    ],
)
def test_errors_name_source_line_and_column(text: str, message: str) -> None:
    with pytest.raises(CaffeImportError, match=message):
        parse(text, "net.prototxt")


# Property: a serializer-independent round trip over random nested messages.
_names = st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True).filter(
    lambda s: s not in ("true", "false", "inf", "nan", "infinity")
)
_scalars = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(max_size=8),
    _names.map(lambda s: Ident(s.upper())),
)
_messages = st.recursive(
    st.dictionaries(_names, st.lists(_scalars, min_size=1, max_size=3), max_size=4),
    lambda inner: st.dictionaries(
        _names, st.lists(st.one_of(_scalars, inner), min_size=1, max_size=3), max_size=4
    ),
    max_leaves=12,
)


def _dump(msg: dict) -> str:
    out = []
    for name, values in msg.items():
        for v in values:
            if isinstance(v, dict):
                out.append(f"{name} {{ {_dump(v)} }}")
            elif isinstance(v, bool):
                out.append(f"{name}: {'true' if v else 'false'}")
            elif isinstance(v, Ident):
                out.append(f"{name}: {v}")
            elif isinstance(v, str):
                escaped = "".join(f"\\{b:03o}" for b in v.encode())
                out.append(f'{name}: "{escaped}"')
            else:
                out.append(f"{name}: {v!r}")
    return "\n".join(out)


def _types(msg: dict) -> list:
    def one_type(value: object) -> object:
        return _types(value) if isinstance(value, dict) else type(value)

    return [[one_type(v) for v in values] for values in msg.values()]


@given(_messages)
def test_round_trip_random_messages(msg: dict) -> None:
    parsed = parse(_dump(msg))
    assert parsed == msg
    assert _types(parsed) == _types(msg)
