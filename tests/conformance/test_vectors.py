"""The conformance vectors: valid files decode to their .npz, invalid ones break their rule."""

import re
from pathlib import Path

import numpy as np
import pytest

import dcformat

VECTORS = Path(__file__).resolve().parents[2] / "spec" / "vectors"
VALID = sorted(VECTORS.glob("*.dcnn"))
INVALID = sorted((VECTORS / "invalid").glob("*.dcnn"))
SPEC = (VECTORS.parent / "dcnn-format.md").read_text()
SPEC_RULES = re.findall(r"^\| `([a-z0-9-]+)` \|", SPEC, flags=re.M)


def expected_rule(path: Path) -> str:
    return path.with_suffix(".expected").read_text().splitlines()[0]


def test_vectors_exist():
    assert len(VALID) >= 10 and len(INVALID) >= 40


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_vector_decodes_to_expected(path):
    expected = np.load(path.with_suffix(".npz"))
    decoded = dcformat.load_file(path)
    assert sorted(decoded) == sorted(expected.files)
    for name in expected.files:
        assert decoded[name].dtype == expected[name].dtype, name
        assert decoded[name].shape == expected[name].shape, name
        assert decoded[name].tobytes() == expected[name].tobytes(), name
    assert dcformat.validate(path).ok


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_vector_breaks_its_rule(path):
    rule = expected_rule(path)
    assert rule in SPEC_RULES
    report = dcformat.validate(path)
    assert [p.rule for p in report.problems][:1] == [rule]
    with pytest.raises(dcformat.DcnnError) as info:
        with dcformat.safe_open(path) as f:
            for name in f.keys():
                f.get_tensor(name)
    assert info.value.rule == rule
    assert str(path) in str(info.value)


@pytest.mark.parametrize("rule", SPEC_RULES)
def test_every_spec_rule_has_an_invalid_vector(rule):
    assert any(expected_rule(p) == rule for p in INVALID), f"no vector breaks {rule}"
