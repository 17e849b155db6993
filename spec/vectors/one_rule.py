"""Does each invalid vector break exactly one rule? python spec/vectors/one_rule.py [NAME...]

For each vector in invalid/: the rule the reference validator reports first (it must be the
expected one), then what it reports with every check of that rule switched off
(``validate(skip_rules=...)``), which must be the rules its ``.expected`` lists as implied
(none for most). Prints the vectors that fail and the count; tests/conformance/test_one_rule.py
asserts the same. Numpy decode path (the native kernels' checks cannot be switched off).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

VECTORS = Path(__file__).parent / "invalid"


def main(names: list[str]) -> None:
    os.environ["DCNN_NO_NATIVE"] = "1"
    import dcformat

    paths = sorted(VECTORS.glob("*.dcnn"))
    if names:
        paths = [p for p in paths if p.stem in names]
    broken = 0
    for path in paths:
        lines = path.with_suffix(".expected").read_text().splitlines()
        rule = lines[0]
        implied = set(lines[1].removeprefix("implied:").split()) if len(lines) > 1 else set()
        first = [p.rule for p in dcformat.validate(path).problems][:1]
        try:
            rest = {p.rule for p in dcformat.validate(path, skip_rules={rule}).problems}
        except Exception as exc:  # code behind a switched-off check failing: a bug to fix
            rest = {f"crash {type(exc).__name__}"}
        if first != [rule] or rest != implied:
            broken += 1
            print(f"{path.stem:32} {rule:16} first {first[0] if first else '-':16} then {sorted(rest)}")
    print(f"{broken} of {len(paths)} vectors do not break exactly one rule (or their implied ones)")


if __name__ == "__main__":
    main(sys.argv[1:])
