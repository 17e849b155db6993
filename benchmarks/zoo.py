"""Data-free compression judged on a zoo of real models from several domains (issue 12).

For each model and config: every source file is converted to .dcnn by the library
(``converters.convert``), decoded back (``dcformat.load_file``), and the decoded model
is run on held-out inputs and scored against the original model's outputs (see
benchmarks/zoo_models.py for the models, their inputs and their measures). Prints one
markdown table; a measure that misses the issue's target is marked with "!".

    python benchmarks/zoo.py [--config safe,fixed8,paper] [--snr DB] [--spread DB] [--models a,b] [--out DIR]
    python benchmarks/zoo.py --calibrated 0.05,0.15 [--output-error per-output] [--error-feedback]
        [--models minilm,mobilenet]
    python benchmarks/zoo.py --simulate [--snr DB] [--simulate-bits N] [--models a,b]

``--simulate`` does not write files: it measures, in numpy, what format features the
writer lacks would buy at the chooser's bits (top 0.5% |w| kept exact; per-output-channel
float16 scales), per model: SQNR of the coded tensors, quality, and the bytes they cost.
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
import numpy as np
from zoo_models import LOADERS, ZooModel

import dcformat
from converters import PAPER, SAFE, apply_options, convert
from converters.compress import fidelity
from converters.weight import EXACT_ROLES

# safe: the default (the error-bounded chooser); fixed8: the old default, 8-bit density k-means
CONFIGS = {"safe": SAFE, "fixed8": replace(SAFE, snr=None), "paper": PAPER}


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
    targets: list[float], names: list[str], out: Path, output_error: str = "concat", feedback: bool = False
) -> None:
    """Calibrated conversions (the models with calibration data) at each output-error target:
    ratio, the error reached on the calibration items, and quality on the held-out inputs.
    ``output_error``: how a graph's several outputs are measured (``--output-error``);
    ``feedback``: the config's ``error_feedback`` (``--error-feedback``)."""
    what = f"`--max-output-error`, `--output-error {output_error}`" + (", error feedback" if feedback else "")
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
            config = apply_options(SAFE, [*options, ("error-feedback", "on" if feedback else "off")])
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


VARIANTS = ("plain", "outliers 0.5%", "channel scales")


def _variant(variant: str, w: np.ndarray, bits: int, init, iters: int) -> tuple[np.ndarray, float]:
    """Decoded values of one variant of the coding, and its estimated bytes: the codes'
    entropy, a float32 codebook and the side data (an outlier: its exact value and a 16-bit
    position gap; a channel: its float16 scale)."""
    if variant == "plain":
        q = fidelity.shared_values(w.ravel(), bits, init, iters).reshape(w.shape)
        return q, _coded_bytes(q)
    if variant == "outliers 0.5%":
        q, shared = fidelity.with_outliers(w, bits, init, iters)
        return q, _coded_bytes(shared) + (w.size - shared.size) * (w.dtype.itemsize + 2)
    q, shared = fidelity.with_channel_scales(w, bits, init, iters)
    return q, _coded_bytes(shared) + 2 * fidelity.channel_rows(w).shape[0]


def _coded_bytes(shared: np.ndarray) -> float:
    _, counts = np.unique(shared, return_counts=True)
    p = counts / shared.size
    return shared.size * float(-(p * np.log2(p)).sum()) / 8 + 4 * counts.size


def simulate(names: list[str], snr: float, fixed_bits: int | None = None) -> None:
    """Per model: every tensor the chooser codes, at the chooser's bits plainly, with 0.5% of
    |w| kept exact, and with per-output-channel float16 scales (numpy only). Two views: at the
    chooser's bits (fidelity gained), and at the fewest bits that keep the floor (bytes saved;
    estimated: codes' entropy + codebook + side data, other tensors at their raw size).
    ``fixed_bits``: every such tensor at that many bits, k-means from density init (the SAFE
    default's coding) instead of the chooser's setting; the floor view is then left out."""
    what = f"{fixed_bits}-bit k-means, density init" if fixed_bits else f"the chooser, floor {snr:g} dB"
    print(f"\n### simulated format features ({what})\n")
    print(
        "| model | variant | median / min dB at the chooser's bits | quality there "
        "| bits saved at the floor | est. ratio at the floor | quality at the floor |"
    )
    print("|---|---|---:|---|---:|---:|---|")
    for name in names:
        model = LOADERS[name]()
        originals = [dcformat.load_file(_as_dcnn(s)) for s in model.sources]
        coded = {}  # (file index, tensor name) -> size, of the tensors the chooser may code
        for i, tensors in enumerate(originals):
            roles = _graph_roles(model.sources[i])
            for key, array in tensors.items():
                if array.dtype.kind != "f" or array.ndim < 2 or array.size < SAFE.min_size:
                    continue
                if fidelity.role_of(key, array.shape, str(array.dtype), roles.get(key)) in EXACT_ROLES:
                    continue
                coded[(i, key)] = array.size
        floors = fidelity.allocate(snr, coded, SAFE.snr_spread)  # as convert() allocates them
        plans = []  # (file index, tensor name, choice, floor)
        for (i, key), floor_db in floors.items():
            if fixed_bits:
                pick = fidelity.Choice(fixed_bits, "density", SAFE.kmeans_iters, floor_db, 0.0, "fixed")
                plans.append((i, key, pick, float("inf")))  # an infinite floor: no fewer bits
                continue
            pick = fidelity.choose(originals[i][key], snr_db=floor_db)
            if pick.bits is not None:
                plans.append((i, key, pick, floor_db))
        if not plans:
            print(f"| {model.name} | (the chooser codes no tensor) | | | | | |", flush=True)
            continue
        coded = {(i, k) for i, k, _, _ in plans}
        exact = sum(a.nbytes for i, t in enumerate(originals) for k, a in t.items() if (i, k) not in coded)
        source_bytes = sum(s.stat().st_size for s in model.sources)
        for variant in VARIANTS:
            same = [dict(t) for t in originals]
            floor = [dict(t) for t in originals]
            dbs, nbytes, saved = [], 0.0, 0
            for i, key, pick, floor_db in plans:
                w = originals[i][key].astype(np.float64)
                best = _variant(variant, w, pick.bits, pick.init, pick.iters)
                same[i][key] = best[0].astype(originals[i][key].dtype)
                dbs.append(fidelity.fidelity_db(w, best[0]))
                bits = pick.bits
                while bits > 1:  # the fewest bits that keep the floor
                    lower = _variant(variant, w, bits - 1, pick.init, pick.iters)
                    if fidelity.fidelity_db(w, lower[0]) < floor_db:
                        break
                    bits, best = bits - 1, lower
                saved += pick.bits - bits
                floor[i][key] = best[0].astype(originals[i][key].dtype)
                nbytes += best[1]
            q_same = ", ".join(f"{k} {_mark(model, k, v)}" for k, v in model.evaluate(same).items())
            q_floor = ", ".join(f"{k} {_mark(model, k, v)}" for k, v in model.evaluate(floor).items())
            print(
                f"| {model.name} | {variant} | {np.median(dbs):.1f} / {min(dbs):.1f} | {q_same} "
                f"| {saved} | {source_bytes / (nbytes + exact):.2f}x | {q_floor} |",
                flush=True,
            )


_DCNN_CACHE: dict[Path, Path] = {}


def _as_dcnn(source: Path) -> Path:
    """The source losslessly in .dcnn (every tensor exact): its tensors by .dcnn name."""
    if source not in _DCNN_CACHE:
        out = Path(tempfile.mkdtemp(prefix="zoo-")) / (source.stem + ".dcnn")
        convert(source, out, replace(SAFE, rules=(), min_size=1 << 62))
        _DCNN_CACHE[source] = out
    return _DCNN_CACHE[source]


def _graph_roles(source: Path) -> dict[str, str | None]:
    if source.suffix != ".onnx":
        return {}
    from converters.formats.onnx_model import read_onnx

    return {w.name: w.role for w in read_onnx(source).weights()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="safe", help="safe, fixed8 or paper; a comma list runs each")
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
    parser.add_argument("--simulate", action="store_true", help="simulate outliers and channel scales")
    parser.add_argument("--simulate-bits", type=int, default=None, help="simulate at N-bit density k-means")
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in LOADERS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(LOADERS)}")
    if args.simulate:
        simulate(names, args.snr or SAFE.snr, args.simulate_bits)
        return 0
    if args.calibrated:
        with tempfile.TemporaryDirectory() as work:
            targets = [float(t) for t in args.calibrated.split(",")]
            calibrated_table(targets, names, args.out or Path(work), args.output_error, args.error_feedback)
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
