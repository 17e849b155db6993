"""Where a calibrated conversion's time goes, and what its last step (the measured
single-tensor moves of ``converters.compress.calibrate._refine``) buys.

For each zoo model with calibration data and each variant, in one run, interleaved: the
calibrated conversion at an output-error target, timed by phase (importance, the ladders of
settings, the measured search rounds, the refinement), the number of output-error
measurements, the tensors' bytes before and after the refinement, the ratio and the quality on
held-out inputs. Variants set calibrate constants (``REFINE_EVALS``, ``REFINE_WINDOW``: the refinement's
measurement budget and its stopping rule).

    python benchmarks/calibration_search.py [--target 0.1] [--models minilm,mobilenet]
        [--refine default,REFINE_EVALS=48:REFINE_WINDOW=1000] [--set LADDER=8,7,6,5,4,3,2]

Needs the zoo (``make zoo``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts the checkout's examples/ on the path)
from zoo import _mark
from zoo_models import LOADERS

import dcformat
from converters import SAFE, apply_options
from converters.compress import calibrate as cal
from converters.compress import outputs


class Trace:
    """Seconds per phase and output-error measurements, by patching the calibration module."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.evals: dict[str, int] = {}
        self.items: dict[str, int] = {}  # outputs compared (an item's, or each output of an item)
        self.phase = "other"
        self.refine_bytes: tuple[int, int] | None = None  # tensors' bytes before, after
        self.curve: list[int] = []  # the tensors' bytes after 0, 1, ... refinement measurements

    def timed(self, phase: str, function):
        def wrapper(*args, **kwargs):
            outer, self.phase = self.phase, phase
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start
                self.phase = outer

        return wrapper


def run(model, target: float, variant: str, folder: Path) -> dict:
    trace = Trace()
    saved = {name: getattr(cal, name) for name in ("_ladders", "_search", "_refine")}
    saved_importance = outputs.ModuleOutputs.importance
    saved_errors = {cls: cls.error for cls in (outputs.ModuleOutputs, outputs.OnnxOutputs)}
    saved_relative = outputs._relative_error

    def relative(*args):
        trace.items[trace.phase] = trace.items.get(trace.phase, 0) + 1
        return saved_relative(*args)

    full = variant.endswith("/full")  # no measurement stops early
    saved_constants: dict = {}
    for setting in variant.removesuffix("/full").split(":"):
        if setting != "default":
            name, _, value = setting.partition("=")
            module = cal if hasattr(cal, name) else outputs
            saved_constants.setdefault((module, name), getattr(module, name))
            setattr(module, name, type(getattr(module, name))(value))

    def counted(error):
        def wrapper(self, *args, **kwargs):
            trace.evals[trace.phase] = trace.evals.get(trace.phase, 0) + 1
            if full:
                kwargs.pop("limit", None)
            return error(self, *args, **kwargs)

        return wrapper

    refine_fn = saved["_refine"]

    def refined(choice, error, ladders, measure, target):
        before = sum(o.tensor.encoded.stored_bytes for o in choice.values())
        kept = [before]  # the tensors' bytes after each measured move

        def measured(trial, limit):
            error, size = measure(trial, limit)
            kept.append(size if error <= target else kept[-1])
            return error, size

        result = refine_fn(choice, error, ladders, measured, target)
        trace.curve = kept
        trace.refine_bytes = (before, sum(o.tensor.encoded.stored_bytes for o in result[0].values()))
        return result

    cal._ladders = trace.timed("ladders", saved["_ladders"])
    cal._search = trace.timed("search", saved["_search"])
    cal._refine = trace.timed("refine", refined)
    outputs.ModuleOutputs.importance = trace.timed("importance", saved_importance)
    for cls, error in saved_errors.items():
        cls.error = counted(error)
    outputs._relative_error = relative
    try:
        config = apply_options(SAFE, [("max-output-error", str(target))])
        start = time.perf_counter()
        error = model.calibrate(config, folder)
        total = time.perf_counter() - start
    finally:
        for name, value in saved.items():
            setattr(cal, name, value)
        for (module, name), value in saved_constants.items():
            setattr(module, name, value)
        outputs.ModuleOutputs.importance = saved_importance
        for cls, error_fn in saved_errors.items():
            cls.error = error_fn
        outputs._relative_error = saved_relative
    files = [folder / f"{s.stem}.dcnn" for s in model.sources]
    if not all(f.exists() for f in files):
        files = [folder / "model.dcnn"]
    ratio = sum(s.stat().st_size for s in model.sources) / sum(f.stat().st_size for f in files)
    quality = model.evaluate([dcformat.load_file(f) for f in files])
    search = trace.seconds.get("search", 0.0) - trace.seconds.get("refine", 0.0)
    return {
        "total": total,
        "importance": trace.seconds.get("importance", 0.0),
        "ladders": trace.seconds.get("ladders", 0.0),
        "rounds": search,
        "refine": trace.seconds.get("refine", 0.0),
        "evals": trace.evals,
        "items": trace.items,
        "refine_bytes": trace.refine_bytes,
        "curve": trace.curve,
        "error": error,
        "ratio": ratio,
        "quality": quality,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.1)
    parser.add_argument(
        "--set", action="append", default=[], help="NAME=V[,V...]: a calibrate module constant (ints)"
    )
    parser.add_argument("--models", default="minilm,mobilenet")
    parser.add_argument(
        "--refine",
        default="default,REFINE_EVALS=48:REFINE_WINDOW=1000",
        help="comma list of variants: default, or NAME=N:NAME=N (calibrate or outputs constants); "
        "a /full suffix: no measurement stops early",
    )
    args = parser.parse_args(argv)
    variants = args.refine.split(",")
    for setting in args.set:
        name, _, value = setting.partition("=")
        numbers = tuple(int(v) for v in value.split(","))
        setattr(cal, name, numbers if isinstance(getattr(cal, name), tuple) else numbers[0])
        print(f"calibrate.{name} = {getattr(cal, name)}")
    print(f"\n### calibrated conversion at target {args.target:g}: seconds by phase, measurements\n")
    print(
        "| model | variant | total s | importance s | ladders s | rounds s (evals) "
        "| refine s (evals, outputs compared) | refine bytes before → after "
        "| bytes saved after 8/16/24/32/48 measurements | ratio "
        "| calibration error | quality |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---|")
    for name in args.models.split(","):
        model = LOADERS[name]()
        for variant in variants:
            with tempfile.TemporaryDirectory() as work:
                r = run(model, args.target, variant, Path(work))
            shown = ", ".join(f"{k} {_mark(model, k, v)}" for k, v in r["quality"].items())
            moved = "-" if r["refine_bytes"] is None else "{} → {}".format(*r["refine_bytes"])
            rounds_evals = r["evals"].get("search", 0) + r["evals"].get("ladders", 0)
            refined = f"{r['evals'].get('refine', 0)}, {r['items'].get('refine', 0)}"
            curve = r["curve"]
            gains = (
                "/".join(str(curve[0] - curve[min(k, len(curve) - 1)]) for k in (8, 16, 24, 32, 48))
                if curve
                else "-"
            )
            print(
                f"| {model.name} | {variant} | {r['total']:.0f} | {r['importance']:.0f} | {r['ladders']:.0f} "
                f"| {r['rounds']:.0f} ({rounds_evals}) | {r['refine']:.0f} ({refined}) "
                f"| {moved} | {gains} | {r['ratio']:.2f}x | {r['error']:.4f} | {shown} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
