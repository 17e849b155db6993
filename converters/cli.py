"""dcnn-convert and dcnn-inspect: command-line front ends of converters and dcformat."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

from dcformat import DcnnError, replacing, safe_open

from .summary import format_table, row, totals

CONVERT_EPILOG = """\
examples:
  dcnn-convert model.safetensors -o model.dcnn             error-bounded default: a 36 dB floor per tensor
  dcnn-convert model.safetensors -o model.dcnn --snr 30    smaller, looser (--snr off: 8-bit k-means)
  dcnn-convert model.dcnn -o restored.safetensors          decode (also .pt, and .onnx for ONNX models)
  dcnn-convert model.onnx -o model.dcnn --bits 6 --report report.json
  dcnn-convert model.pt -o model.dcnn --bits 'encoder.*=6' --prune 'fc*=0.9' --exclude 'embeddings.*'
  dcnn-convert model.pt -o model.dcnn --paper              the paper's 8-bit conv, 5-bit fc
  dcnn-convert model.pt -o model.dcnn --config settings.toml
  dcnn-convert squeezenet.net --prototxt deploy.prototxt -o squeezenet.dcnn   lossless
  dcnn-convert llama-folder/ -o llama.dcnn --workers 8   a model folder, sharded or not
  dcnn-convert llama.dcnn -o restored/                   the folder back: shards, index, configs
  dcnn-convert llama-folder/ -o llama.dcnn --ray         on the Ray cluster at RAY_ADDRESS

By default floating-point tensors of rank >= 2 with at least 1024 elements are compressed,
each to the fewest bytes within its fidelity floor (--snr); biases, norms, quantization
scales and zero points (told by the graph or module) and integer tensors are stored exactly.
Patterns are shell-style (fnmatch) and match a tensor name or its module name (fc1 matches fc1.weight); later
settings win. A config file holds CompressionConfig fields, e.g.

  fc_bits = 6
  init = "density"
  [rules."encoder.*"]
  bits = 5
  sparsity = 0.5

exit status: 0 done, 1 failure (nothing is written), 2 usage error"""

INSPECT_EPILOG = """\
examples:
  dcnn-inspect model.dcnn
  dcnn-inspect --json model.dcnn > model.json
  dcnn-inspect model.dcnn --plot model.png    each layer's weights and centroids, bits and error

exit status: 0 done, 1 the file cannot be read, 2 usage error"""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class _Ordered(argparse.Action):
    """Collect several options into one list of (option, value), in command-line order."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: Any, value: Any, option: Any = None
    ) -> None:
        items = [*getattr(namespace, self.dest), (str(option).lstrip("-"), value)]
        setattr(namespace, self.dest, items)  # a new list: the default one is shared


def _fail(prog: str, exc: DcnnError | OSError) -> int:
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return 2 if isinstance(exc, DcnnError) and exc.rule == "usage" else 1


def convert_main(argv: list[str] | None = None) -> int:
    """Entry point of dcnn-convert."""
    parser = _Parser(
        prog="dcnn-convert",
        description="Convert a model to .dcnn (Deep Compression) or a .dcnn back to a model. "
        "The direction comes from the file extensions.",
        epilog=CONVERT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "src", metavar="SRC", help=".safetensors, .pt/.pth, .onnx, .net, .dcnn or a model folder"
    )
    parser.add_argument(
        "-o", "--output", required=True, metavar="DST", help="the file to write (a folder for a .dcnn SRC)"
    )
    parser.add_argument("-f", "--force", action="store_true", help="overwrite DST if it exists")
    base = parser.add_mutually_exclusive_group()
    base.add_argument("--config", metavar="FILE.toml", help="start from the settings in this file")
    base.add_argument("--paper", action="store_true", help="start from the paper's defaults")
    rules = parser.add_argument_group("compression (to .dcnn)")
    for flag, metavar, text in (
        ("--bits", "BITS", "weight bits: N for every tensor, or PATTERN=N"),
        ("--prune", "PRUNE", "prune a fraction of weights: F for every tensor, or PATTERN=F (0.9 or 90%%)"),
        ("--include", "INCLUDE", "compress tensors matching PATTERN that would be stored exactly"),
        ("--exclude", "EXCLUDE", "store tensors matching PATTERN exactly"),
        ("--snr", "DB", "the default's fidelity floor per tensor in dB (36; 'off': fixed bits)"),
        (
            "--extras",
            "LIST",
            "what the default may use: 'scales,outliers,float16' (default), some of them, or 'none'",
        ),
    ):
        rules.add_argument(flag, action=_Ordered, dest="options", default=[], metavar=metavar, help=text)
    rules.add_argument("--init", choices=("linear", "density", "random"), help="centroid initialization")
    rules.add_argument("--min-size", type=int, metavar="N", help="compress tensors of at least N elements")
    parser.add_argument(
        "--prototxt", metavar="DEPLOY.prototxt", help="for a .net release file: its deploy prototxt"
    )
    calibrated = parser.add_argument_group("calibration (ONNX sources)")
    calibrated.add_argument(
        "--calibration",
        metavar="INPUTS.npz",
        help="sample inputs: one array per graph input, named as it; sample i is array[i]",
    )
    calibrated.add_argument(
        "--max-output-error",
        action=_Ordered,
        dest="options",
        metavar="E",
        help="smallest file whose mean ||y - y0|| / ||y0|| on the samples is at most E "
        "(y: all outputs flattened and concatenated)",
    )
    calibrated.add_argument(
        "--output-error",
        action=_Ordered,
        dest="options",
        choices=("concat", "per-output"),
        help="with several graph outputs, what E bounds: 'concat' (default) the concatenated outputs' "
        "error; 'per-output' each output's mean error (the largest of them)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="compress tensors in N processes (default: this machine's cores; the file is the same)",
    )
    parser.add_argument(
        "--ray", action="store_true", help="compress tensors as Ray tasks (RAY_ADDRESS, or a local Ray)"
    )
    parser.add_argument(
        "--single-file", action="store_true", help="for folder output: one weight file, not the shards"
    )
    parser.add_argument("--report", metavar="FILE.json", help="write the summary as JSON")
    parser.add_argument(
        "--external-data", action="store_true", help="for .onnx output: keep the weights in DST.data"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    args = parser.parse_args(argv)

    from .compress.config import PAPER, SAFE, apply_options, load_config
    from .conversion import convert
    from .parallel import default_workers

    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    try:
        config = load_config(args.config) if args.config else PAPER if args.paper else SAFE
        config = apply_options(config, args.options, init=args.init, min_size=args.min_size)
        report = convert(
            args.src,
            args.output,
            config,
            force=args.force,
            progress=not args.quiet and sys.stderr.isatty(),
            external_data=args.external_data or None,
            prototxt=args.prototxt,
            calibration=args.calibration,
            workers=args.workers or (0 if args.ray else default_workers()),
            ray=args.ray,
            single_file=args.single_file,
        )
        if args.report:
            with replacing(Path(args.report)) as tmp:
                tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    except (DcnnError, OSError) as exc:
        return _fail(parser.prog, exc)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; nothing was written", file=sys.stderr)
        return 130
    if not args.quiet:
        for note in report.notes:
            print(note, file=sys.stderr)
        if report.config is not None:
            print(report.table())
        print(f"wrote {report.destination} in {report.seconds:.1f} s")
    return 0


def inspect_main(argv: list[str] | None = None) -> int:
    """Entry point of dcnn-inspect."""
    parser = _Parser(
        prog="dcnn-inspect",
        description="Show a .dcnn file's version, metadata and tensors; nothing is decoded.",
        epilog=INSPECT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", metavar="FILE")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--plot",
        metavar="OUT.png",
        help="draw each layer's weights and centroids, bits and error (matplotlib)",
    )
    args = parser.parse_args(argv)
    try:
        with safe_open(args.file) as dcnn:
            infos = [dcnn.info(name) for name in dcnn.keys()]
            source = dcnn.source()
            summary = {
                "path": args.file,
                "version": list(dcnn.version),
                "producer": dcnn.producer,
                "metadata": dcnn.metadata(),
                "source": {
                    "format": source.format,
                    "skeleton_bytes": len(source.skeleton),
                    "attributes": dict(source.attributes),
                },
                "total": totals(infos, dcnn.size),
                "tensors": [row(info) for info in infos],
            }
            size = dcnn.size
        if args.plot:
            from .plot import plot_file

            plot_file(args.file, args.plot)
    except DcnnError as exc:
        return _fail(parser.prog, exc)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    major, minor = summary["version"]
    print(f"{args.file}: .dcnn {major}.{minor}, {size:,} bytes, written by {summary['producer'] or '-'}")
    if source.format:
        print(
            f"source: {source.format}"
            + (f", graph {len(source.skeleton):,} bytes" if source.skeleton else "")
        )
    for key, value in sorted(source.attributes.items()):
        print(f"  {key}: {value}")
    for key, value in sorted(summary["metadata"].items()):
        print(f"metadata {key}: {value}")
    print(format_table(infos, size))
    return 0
