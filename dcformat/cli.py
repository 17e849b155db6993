"""dcnn-validate: check .dcnn files against the format spec."""

from __future__ import annotations

import argparse
import json
import sys

from .validate import validate

EPILOG = """examples:
  dcnn-validate model.dcnn
  dcnn-validate --json a.dcnn b.dcnn > report.json

exit status: 0 all files valid, 1 a file is invalid, 2 usage error"""


def validate_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dcnn-validate",
        description="Check .dcnn files against every rule of the spec.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--json", action="store_true", help="print a JSON report")
    args = parser.parse_args(argv)
    reports = [validate(path) for path in args.files]
    if args.json:
        json.dump([r.to_dict() for r in reports], sys.stdout, indent=2)
        print()
    else:
        for report in reports:
            if report.ok:
                print(f"{report.path}: ok ({report.tensors} tensors)")
            for problem in report.problems:
                print(f"{report.path}: {problem}")
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(validate_main())
