"""Does each invalid vector break exactly one rule? python spec/vectors/one_rule.py [NAME...]

For each vector in invalid/: the rule the reference validator reports first (it must be the
expected one), then what it reports with every check of that rule switched off. A vector that
breaks one rule only then validates; anything else is listed (a second rule, a crash of the
unguarded code, or a check the switch cannot reach: "not switched").

The switch: every ``raise X(..., rule=R)`` of dcformat is found by its syntax tree, and while R
is waived a tracer jumps over those raise statements as if their condition had been false
(raises that end a function cannot be jumped over). Numpy decode path; slow (minutes).
"""

from __future__ import annotations

import ast
import os
import resource
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import dcformat

VECTORS = Path(__file__).parent / "invalid"

ROOT = Path(dcformat.__file__).parent


def _sites() -> dict[tuple[str, int], tuple[str | None, str | None, int]]:
    """(file, line of a raise) -> (literal rule or None, variable naming the rule or None,
    line to jump to)."""
    sites = {}
    for path in ROOT.rglob("*.py"):
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
                continue
            rule = next((k.value for k in node.exc.keywords if k.arg == "rule"), None)
            if isinstance(rule, ast.Constant):
                literal, variable = rule.value, None
            elif isinstance(rule, ast.Name):
                literal, variable = None, rule.id
            else:
                continue
            target = _after(node, parents)
            if target is not None:
                sites[(str(path), node.lineno)] = (literal, variable, target)
    return sites


def _after(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> int | None:
    """The line execution continues at when ``node`` is skipped, or None (end of a function)."""
    while True:
        parent = parents[node]
        body = next(
            (b for b in ("body", "orelse", "finalbody", "handlers") if node in getattr(parent, b, [])), None
        )
        if body is None:
            return None
        siblings = getattr(parent, body)
        index = siblings.index(node)
        if index + 1 < len(siblings):
            return siblings[index + 1].lineno
        if isinstance(parent, ast.For | ast.While) and body == "body":
            return parent.lineno  # continue with the next iteration
        if isinstance(parent, ast.FunctionDef | ast.Module):
            return None
        node = parent


SITES = _sites()


@contextmanager
def waived(rule: str) -> Iterator[list[str]]:
    """Run with every check of ``rule`` off; yields the list of places that were skipped."""
    skipped: list[str] = []

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            site = SITES.get((frame.f_code.co_filename, frame.f_lineno))
            if site is not None:
                literal, variable, target = site
                if (literal if variable is None else frame.f_locals.get(variable)) == rule:
                    skipped.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}")
                    frame.f_lineno = target
        return local

    files = {file for file, _ in SITES}

    def global_trace(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename in files else None

    old = sys.gettrace()
    sys.settrace(global_trace)
    try:
        yield skipped
    finally:
        sys.settrace(old)


def main(names: list[str]) -> None:
    os.environ["DCNN_NO_NATIVE"] = "1"  # the tracer sees Python code only
    # a switched-off limit lets the code behind it allocate or loop: bound both
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    signal.signal(signal.SIGALRM, _timeout)
    expected = sorted(VECTORS.glob("*.expected"))
    if names:
        expected = [e for e in expected if e.stem in names]
    broken = 0
    for path in expected:
        rule = path.read_text().split()[0]
        vector = path.with_suffix(".dcnn")
        first = [p.rule for p in dcformat.validate(vector).problems][:1]
        skipped = []
        signal.alarm(60)
        try:
            with waived(rule) as skipped:
                after = [p.rule for p in dcformat.validate(vector).problems]
        except Exception as exc:  # the code behind a switched-off check may fail any way
            after = [f"crash {type(exc).__name__}"]
        finally:
            signal.alarm(0)
        if first != [rule] or after or not skipped:
            broken += 1
            then = "not switched" if not skipped else ", ".join(after) or "-"
            print(f"{path.stem:40} {rule:16} first {first[0] if first else '-':16} then {then}", flush=True)
    print(f"{broken} of {len(expected)} vectors do not break exactly one rule")


def _timeout(signum: int, frame: FrameType | None) -> None:
    raise TimeoutError


if __name__ == "__main__":
    main(sys.argv[1:])
