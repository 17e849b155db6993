"""Deep Compression with retraining on your own model and data: LeNet-300-100 on MNIST.

Usage: python -m examples.retrain_mnist [--out FILE] [--epochs 4] [--quantizer kmeans|ternary|binary]

Trains a small dense network, then ``converters.deep_compress`` prunes it in three rounds
(retraining with the masks held), shares its weights and fine-tunes the centroids (or trains
ternary/binary weights), and the result is written and read back.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader, TensorDataset

import converters
import dcformat
from examples.lenet import LeNet300100
from examples.mnist import load_mnist


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="lenet-300-100.dcnn")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per stage")
    parser.add_argument("--quantizer", default="kmeans", choices=["kmeans", "ternary", "binary"])
    parser.add_argument("--train-images", type=int, default=4000, help="use N of them (a quick try)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = (torch.from_numpy(a) for a in load_mnist())
    subset = torch.randperm(len(x_train))[: args.train_images]  # the images are sorted by class
    loader = DataLoader(TensorDataset(x_train[subset], y_train[subset]), batch_size=64, shuffle=True)
    model = LeNet300100()

    def error(m: torch.nn.Module) -> float:  # percent misclassified on the test images
        m.eval()
        with torch.no_grad():
            return 100.0 * (m(x_test).argmax(1) != y_test).float().mean().item()

    # Your own dense training goes here; the pipeline's plain loop serves as well.
    converters.TrainLoop(loader, lr=0.05).fit(model, epochs=3 * args.epochs)

    config = converters.CompressionConfig(
        fc_bits=4,
        min_size=256,
        prune_steps=3,
        rules=(
            converters.LayerRule("fc1", sparsity=0.92),
            converters.LayerRule("fc2", sparsity=0.9),
            converters.LayerRule("fc3", sparsity=0.7, bits=5),
        ),
    )
    retrain = converters.TrainLoop(loader, prune_epochs=args.epochs, quantize_epochs=args.epochs, lr=0.02)
    result = converters.deep_compress(model, retrain, error, config, quantizer=args.quantizer, distill=True)
    size = result.save(args.out)
    print(result.report)

    decoded = LeNet300100()
    decoded.load_state_dict({k: torch.from_numpy(v) for k, v in dcformat.load_file(args.out).items()})
    original = sum(p.numel() * 4 for p in decoded.parameters())
    err = error(decoded)
    print(f"\n{args.out}: {size:,} bytes, {original / size:.1f}x smaller, test error {err:.2f}%")
    return err


if __name__ == "__main__":
    main()
