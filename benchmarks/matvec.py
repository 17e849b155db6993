"""Layers run on the compressed form against dense torch and torch's CSR, side by side.

    python benchmarks/matvec.py [--rounds 30] [--threads 2] [--models alexnet,vgg16,lenet,minilm]
    python benchmarks/matvec.py --sweep     # the measurements behind dcformat.interop.compressed.choose
    python benchmarks/matvec.py --loads 10  # the form each close call takes over 10 loads

For each model, its fully connected layers are written to a .dcnn file (random weights at the
stated densities, random masks, codebook codes; LeNet-300-100's masks are random at the
densities benchmarks/lenet.py prunes to, not its trained masks) and loaded twice: densely, and
with ``load_into(compressed=True)``, which keeps each layer dense or makes it a sparse (CSR +
uint8 codes) or LUT (dense uint8 codes) module, as dcformat.interop.compressed.choose predicts.
Times are per forward call (bias included), best and median of interleaved rounds; "whole" runs
the layers in sequence with ReLUs between (MiniLM: the sum of its 36 layers' best times, which
do not chain); each timed call follows a 20 ms pause and an untimed call of the same method
(see timed). A layer the loader keeps dense is the same nn.Linear as the dense column: its dcnn
time is that column's (timing it twice would only show noise). Memory is the bytes each form
holds for the weight (bias excluded): dense float32; torch CSR (int64 indices, float32 values);
dcnn (the chosen form). "err" is the largest |dcnn - dense| over the largest |dense| output.
torch and the kernels use ``--threads``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

import dcformat
from dcformat.codec import matvec
from dcformat.interop import compressed
from dcformat.interop import torch as dcnn_torch

BATCHES = (1, 4, 16)
SETTLE_S = 0.02  # pause before each timed method (see timed)
WARM_CALLS = 2  # untimed calls after each pause
TIMED_CALLS = 3  # then timed calls, back to back
# name: list of (layer, out, in, density, bits, count); density None = dense codes.
MODELS: dict[str, list[tuple[str, int, int, float | None, int, int]]] = {
    "alexnet": [
        ("fc6", 4096, 9216, 0.09, 5, 1),
        ("fc7", 4096, 4096, 0.09, 5, 1),
        ("fc8", 1000, 4096, 0.25, 5, 1),
    ],
    "vgg16": [
        ("fc6", 4096, 25088, 0.04, 5, 1),
        ("fc7", 4096, 4096, 0.04, 5, 1),
        ("fc8", 1000, 4096, 0.23, 5, 1),
    ],
    # benchmarks/lenet.py prunes 93%, 93%, 70% with 4, 4, 5 bits (random masks here)
    "lenet-300-100": [
        ("fc1", 300, 784, 0.07, 4, 1),
        ("fc2", 100, 300, 0.07, 4, 1),
        ("fc3", 10, 100, 0.30, 5, 1),
    ],
    # all-MiniLM-L6-v2: per layer q, k, v, o (384x384), intermediate, output; default 8 bits
    "minilm": [
        ("attn q/k/v/o", 384, 384, None, 8, 24),
        ("ffn in", 1536, 384, None, 8, 6),
        ("ffn out", 384, 1536, None, 8, 6),
    ],
}
CHAINS = {"alexnet": True, "vgg16": True, "lenet-300-100": True, "minilm": False}


class CsrLinear(nn.Module):
    """torch's own sparse CSR product, for comparison."""

    def __init__(self, dense: nn.Linear) -> None:
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.weight = dense.weight.detach().to_sparse_csr()
        self.bias = dense.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.weight @ x.t()).t() + self.bias

    def nbytes(self) -> int:
        w = self.weight
        parts = (w.crow_indices(), w.col_indices(), w.values())
        return sum(t.numel() * t.element_size() for t in parts)


def make_file(path: Path, layers: list, rng: np.random.Generator) -> None:
    tensors: dict[str, object] = {}
    for name, rows, cols, density, bits, _ in layers:
        k = 1 << bits
        book = np.sort(rng.standard_normal(k).astype(np.float32)) * np.float32(0.05)
        if density is None:
            codes = rng.integers(0, k, rows * cols)
            tensors[f"{name}.weight"] = dcformat.Quantized(book, codes, (rows, cols))
        else:
            book[0] = 0.0
            positions = np.flatnonzero(rng.random(rows * cols) < density)
            codes = rng.integers(1, k, positions.size)
            tensors[f"{name}.weight"] = dcformat.Quantized(book, codes, (rows, cols), positions=positions)
        tensors[f"{name}.bias"] = rng.standard_normal(rows).astype(np.float32)
    dcformat.save_file(tensors, path)


def skeleton(layers: list) -> nn.ModuleDict:
    return nn.ModuleDict({name: nn.Linear(cols, rows) for name, rows, cols, *_ in layers})


def nbytes(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.weight.numel() * module.weight.element_size()
    return module.stored_bytes()


def form(module: nn.Module) -> str:
    return {nn.Linear: "dense", compressed.SparseCodedLinear: "sparse", compressed.LutCodedLinear: "lut"}[
        type(module)
    ]


def timed(methods: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each method: a warm-up call each, then rounds in which the methods
    take turns, the order rotating from round to round (no method always follows another).
    Each turn is a pause of SETTLE_S, WARM_CALLS untimed calls of the method, then TIMED_CALLS
    timed ones back to back: the threads the previous method left spinning (torch's OpenMP
    threads spin for milliseconds after a parallel op, the kernels' pool for 0.1 ms) have
    stopped, and the threads this method uses have woken (an idle virtual CPU can take
    milliseconds to), so every method is timed in its own back-to-back state."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    names = list(methods)
    with torch.inference_mode():
        for fn in methods.values():
            fn()
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                time.sleep(SETTLE_S)
                for _ in range(WARM_CALLS):
                    methods[name]()
                for _ in range(TIMED_CALLS):
                    start = time.perf_counter()
                    methods[name]()
                    times[name].append(time.perf_counter() - start)
    return times


def chain(mods: list[nn.Module]) -> nn.Sequential:
    parts: list[nn.Module] = []
    for m in mods:
        parts += [m, nn.ReLU()]
    return nn.Sequential(*parts[:-1])


def run_model(model: str, rounds: int, rng: np.random.Generator, tmp: Path) -> list[float]:
    layers = MODELS[model]
    path = tmp / f"{model}.dcnn"
    make_file(path, layers, rng)
    dense, comp = skeleton(layers), skeleton(layers)
    dcnn_torch.load_into(dense, path)
    dcnn_torch.load_into(comp, path, compressed=True)
    csr = {name: CsrLinear(dense[name]) for name in dense}
    print(f"\n### {model}\n")
    print(
        "| layer | batch | dense ms | torch CSR ms | dcnn ms (form) | x dense | x best other | err |"
        " dense MB | CSR MB | dcnn MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    worst = []
    rows_out = []
    for name, rows, cols, density, bits, count in layers:
        label = (
            f"{name} {rows}x{cols} "
            + (f"{density:.0%}" if density is not None else "dense codes")
            + f" {bits}b"
        )
        if count > 1:
            label += f" (x{count})"
        for batch in BATCHES:
            x = torch.randn(batch, cols)
            kept_dense = isinstance(comp[name], nn.Linear)  # the same module as dense: its times
            layer = {"dense": dense[name], "csr": csr[name], **({} if kept_dense else {"dcnn": comp[name]})}
            t = timed({k: partial(m, x) for k, m in layer.items()}, rounds)
            if kept_dense:
                t["dcnn"] = t["dense"]
            with torch.inference_mode():
                ref, got = dense[name](x), comp[name](x)
            err = float((ref - got).abs().max() / ref.abs().max())
            best = {k: min(v) * 1e3 for k, v in t.items()}
            med = {k: statistics.median(v) * 1e3 for k, v in t.items()}
            other = min(best["dense"], best["csr"])
            worst.append(best["dcnn"] / other)
            rows_out.append((name, batch, best, count))
            print(
                f"| {label} | {batch} | {best['dense']:.3f} ({med['dense']:.3f}) | "
                f"{best['csr']:.3f} ({med['csr']:.3f}) | "
                f"{best['dcnn']:.3f} ({med['dcnn']:.3f}) {form(comp[name])} | "
                f"{best['dense'] / best['dcnn']:.2f} | "
                f"{other / best['dcnn']:.2f} | {err:.1e} | {nbytes(dense[name]) / 1e6:.2f} | "
                f"{csr[name].nbytes() / 1e6:.2f} | {nbytes(comp[name]) / 1e6:.2f} |"
            )
    total_dense = sum(nbytes(dense[n]) * c for n, *_, c in layers)
    total_csr = sum(csr[n].nbytes() * c for n, *_, c in layers)
    total_dcnn = sum(nbytes(comp[n]) * c for n, *_, c in layers)
    for batch in BATCHES:
        if CHAINS[model]:
            x = torch.randn(batch, layers[0][2])
            seqs = {
                "dense": chain([dense[n] for n, *_ in layers]),
                "csr": chain([csr[n] for n, *_ in layers]),
                "dcnn": chain([comp[n] for n, *_ in layers]),
            }
            t = timed({k: partial(s, x) for k, s in seqs.items()}, rounds)
            best = {k: min(v) * 1e3 for k, v in t.items()}
            how = "in sequence"
        else:
            best = {
                k: sum(b[k] * c for n, bb, b, c in rows_out if bb == batch) for k in ("dense", "csr", "dcnn")
            }
            how = "sum of layers"
        other = min(best["dense"], best["csr"])
        worst.append(best["dcnn"] / other)
        print(
            f"| **whole ({how})** | {batch} | {best['dense']:.3f} | {best['csr']:.3f} | {best['dcnn']:.3f} | "
            f"{best['dense'] / best['dcnn']:.2f} | {other / best['dcnn']:.2f} | | {total_dense / 1e6:.2f} | "
            f"{total_csr / 1e6:.2f} | {total_dcnn / 1e6:.2f} ({total_dcnn / total_dense:.0%}) |"
        )
    return worst


def sweep(rounds: int, rng: np.random.Generator) -> None:
    """Dense, sparse and LUT times over shapes and densities unlike the table's, and the per-entry
    costs they give next to the constants of dcformat.interop.compressed's cost model."""
    shapes = [(256, 256), (128, 1000), (512, 2048), (2048, 1024), (3000, 6000), (1024, 12000), (8000, 2000)]
    densities = [0.02, 0.05, 0.1, 0.2, 0.35, 0.5]
    batches = [1, 2, 4, 8, 16]
    # kind: (entries, weights, batch, seconds)
    points: dict[str, list[tuple[int, int, int, float]]] = {"sparse": [], "lut": [], "dense": []}
    print(
        "| shape | batch | dense ms | lut ms | sparse ms at densities "
        + " ".join(f"{d:.0%}" for d in densities)
        + " |"
    )
    print("|---|---:|---:|---:|---|")
    for rows, cols in shapes:
        book = np.sort(rng.standard_normal(32).astype(np.float32))
        book[0] = 0
        dense = nn.Linear(cols, rows)
        lut = compressed.LutCodedLinear(cols, rows, rng.integers(0, 32, (rows, cols)).astype(np.uint8), book)
        sparse = []
        for d in densities:
            pos = np.flatnonzero(rng.random(rows * cols) < d)
            indptr, cidx = matvec.csr_of(pos, rows, cols)
            sparse.append(
                compressed.SparseCodedLinear(
                    cols, rows, indptr, cidx, rng.integers(1, 32, pos.size).astype(np.uint8), book
                )
            )
        for batch in batches:
            x = torch.randn(batch, cols)
            methods = {"dense": partial(dense, x), "lut": partial(lut, x)}
            methods |= {f"s{i}": partial(m, x) for i, m in enumerate(sparse)}
            best = {k: min(v) for k, v in timed(methods, rounds).items()}
            points["dense"].append((rows * cols, rows * cols, batch, best["dense"]))
            points["lut"].append((rows * cols, rows * cols, batch, best["lut"]))
            for i, m in enumerate(sparse):
                points["sparse"].append((m.codes.numel(), rows * cols, batch, best[f"s{i}"]))
            print(
                f"| {rows}x{cols} | {batch} | {best['dense'] * 1e3:.3f} | {best['lut'] * 1e3:.3f} | "
                + " ".join(f"{best[f's{i}'] * 1e3:.3f}" for i in range(len(sparse)))
                + " |"
            )
    print(
        "\nns per entry (sparse: stored entry; dense, LUT: weight) after the per-call cost, median over"
        f" the layers of {compressed.CACHE_WEIGHTS} weights or more"
        " (dcformat.interop.compressed's model in brackets):"
    )
    print("| batch | " + " | ".join(points) + " |\n|---:|" + "---:|" * len(points))
    for batch in batches:
        cells = []
        for kind, pts in points.items():
            big = [
                (t * 1e9 - compressed._CALL_NS[kind]) / e
                for e, w, b, t in pts
                if b == batch and w >= compressed.CACHE_WEIGHTS and e
            ]
            cells.append(f"{statistics.median(big):.3f} ({compressed._per_entry_ns(kind, batch):.3f})")
        print(f"| {batch} | " + " | ".join(cells) + " |")


def decisions(model: str, loads: int, rng: np.random.Generator, tmp: Path) -> None:
    """Load the model compressed ``loads`` times (one process, one file) and print, for each
    layer that load_into times as a close call (``compressed.contender``), the form it took each
    time and the ratios timed (compressed / dense at each batch, per window)."""
    layers = MODELS[model]
    path = tmp / f"{model}.dcnn"
    make_file(path, layers, rng)
    with dcformat.safe_open(path) as f:
        close = [
            name
            for name, rows, cols, density, *_ in layers
            if compressed.contender(
                rows, cols, f.info(f"{name}.weight").nonzeros, dense_codes=density is None
            )
        ]
    print(f"\n### {model}: close calls over {loads} loads (compressed / dense time at batch {BATCHES})\n")
    if not close:
        print("no close calls: the cost model decides every layer")
        return
    windows: dict[int, list[str]] = {}  # per compressed module timed, in the order timed
    untimed = compressed.time_forms

    def recording(new: nn.Module, *args: object) -> dict[int, tuple[float, float]]:
        times = untimed(new, *args)
        windows.setdefault(id(new), []).append(" ".join(f"{a / d:.2f}" for a, d in times.values()))
        return times

    verdicts: dict[str, list[str]] = {name: [] for name in close}
    compressed.time_forms = recording  # replace_coded looks it up at each call
    try:
        for _ in range(loads):
            windows.clear()
            module = skeleton(layers)
            dcnn_torch.load_into(module, path, compressed=True)
            for name, timed in zip(close, windows.values(), strict=True):
                verdicts[name].append(f"{form(module[name])} ({' | '.join(timed)})")
    finally:
        compressed.time_forms = untimed
    for name, seen in verdicts.items():
        kept = sum(not v.startswith("dense") for v in seen)
        print(f"- {name}: compressed in {kept} of {loads} loads: " + "; ".join(seen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--loads", type=int, help="only the close calls' forms over this many loads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    native = f"native kernels: {matvec.enabled()} {matvec.features()}"
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    machine = f"{os.cpu_count()} CPUs, load average {load}"
    print(f"torch {torch.__version__}, {args.threads} threads, {native}; {machine}")
    if args.sweep:
        sweep(args.rounds, rng)
        return
    if args.loads:
        with tempfile.TemporaryDirectory() as tmp:
            for model in args.models.split(","):
                decisions(model, args.loads, rng, Path(tmp))
        return
    worst = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            worst += run_model(model, args.rounds, rng, Path(tmp))
    print(f"\nslowest dcnn against the better of dense and torch CSR: {max(worst):.2f}x its time")


if __name__ == "__main__":
    main()
