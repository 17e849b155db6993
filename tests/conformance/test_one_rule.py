"""Each invalid vector breaks exactly one rule under the check order of spec 11.1: the validator
reports its rule first, and with every check of that rule switched off (``skip_rules``) the file
validates, or breaks only the rules its ``.expected`` lists as implied (spec 12)."""

from pathlib import Path

import pytest

import dcformat

VECTORS = Path(__file__).resolve().parents[2] / "spec" / "vectors" / "invalid"
INVALID = sorted(VECTORS.glob("*.dcnn"))


def expected(path: Path) -> tuple[str, set[str]]:
    """The vector's rule and the rules it implies (second line ``implied: RULE ...``)."""
    lines = path.with_suffix(".expected").read_text().splitlines()
    implied = lines[1].removeprefix("implied:").split() if len(lines) > 1 else []
    return lines[0], set(implied)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_vector_breaks_one_rule(path, monkeypatch):
    monkeypatch.setenv("DCNN_NO_NATIVE", "1")  # the same checks run in the numpy path
    rule, implied = expected(path)
    assert rule not in implied
    assert [p.rule for p in dcformat.validate(path).problems][:1] == [rule]
    rest = {p.rule for p in dcformat.validate(path, skip_rules={rule}).problems}
    assert rest == implied, f"with {rule} off: {sorted(rest)}"


def test_skip_rules_switches_off_only_the_rules_named():
    path = VECTORS / "header_crc.dcnn"
    assert [p.rule for p in dcformat.validate(path, skip_rules={"magic"}).problems] == ["header-crc"]
    assert dcformat.validate(path, skip_rules={"header-crc"}).ok
    assert [p.rule for p in dcformat.validate(path).problems] == ["header-crc"]  # nothing left off
