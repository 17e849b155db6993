"""Where the bytes of a converted release (.net) file go: a SqueezeNet-v1.0-shaped release
file (26 conv layers, 52 tensors, 8-bit codes, synthetic trained-like codes at ``--density``)
converted with the safe data-free settings, its size split into tensor payload, codebooks and
the rest (header records, source skeleton, section padding).

    python benchmarks/caffe_overhead.py [--density D] [--seed S]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dcformat
from converters.compress.config import SAFE
from converters.compress.tensor import compress_weight
from converters.formats.caffe_release.prototxt import parse
from converters.formats.caffe_release.read import read_net
from converters.formats.caffe_release.release import SparseWeight, encode_release
from converters.formats.caffe_release.shapes import release_layers
from dcformat.encodings.base import sections_of
from dcformat.layout import align_up

FIRES = [
    (2, 16, 64),
    (3, 16, 64),
    (4, 32, 128),
    (5, 32, 128),
    (6, 48, 192),
    (7, 48, 192),
    (8, 64, 256),
    (9, 64, 256),
]
POOL_AFTER = {1: "conv1", 4: "fire4/concat", 8: "fire8/concat"}


def conv(name: str, bottom: str, width: int, kernel: int, pad: int = 0) -> str:
    """A convolution and its ReLU, in place."""
    return (
        f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
        f"convolution_param {{ num_output: {width} pad: {pad} kernel_size: {kernel} }} }}\n"
        f'layer {{ name: "{name}/relu" type: "ReLU" bottom: "{name}" top: "{name}" }}'
    )


def squeezenet_prototxt() -> str:
    """SqueezeNet v1.0's deploy structure (227x227 input), release-style layer names."""
    lines = [
        'name: "SqueezeNet" input: "data" input_dim: 1 input_dim: 3 input_dim: 227 input_dim: 227',
        'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" '
        "convolution_param { num_output: 96 kernel_size: 7 stride: 2 } }",
        'layer { name: "relu_conv1" type: "ReLU" bottom: "conv1" top: "conv1" }',
        'layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" '
        "pooling_param { pool: MAX kernel_size: 3 stride: 2 } }",
    ]
    bottom = "pool1"
    for n, squeeze_width, expand in FIRES:
        f = f"fire{n}"
        squeeze, e1, e3 = f"{f}/conv1x1_1", f"{f}/conv1x1_2", f"{f}/conv3x3_2"  # release names
        lines += [
            conv(squeeze, bottom, squeeze_width, 1),
            conv(e1, squeeze, expand, 1),
            conv(e3, squeeze, expand, 3, pad=1),
            f'layer {{ name: "{f}/concat" type: "Concat" bottom: "{e1}" bottom: "{e3}" top: "{f}/concat" }}',
        ]
        bottom = f"{f}/concat"
        if n in POOL_AFTER:
            lines.append(
                f'layer {{ name: "pool{n}" type: "Pooling" bottom: "{bottom}" top: "pool{n}" '
                "pooling_param { pool: MAX kernel_size: 3 stride: 2 } }"
            )
            bottom = f"pool{n}"
    lines += [
        'layer { name: "drop9" type: "Dropout" bottom: "fire9/concat" top: "fire9/concat" }',
        'layer { name: "conv10" type: "Convolution" bottom: "fire9/concat" top: "conv10" '
        "convolution_param { num_output: 1000 pad: 1 kernel_size: 1 } }",
        'layer { name: "relu_conv10" type: "ReLU" bottom: "conv10" top: "conv10" }',
        'layer { name: "pool10" type: "Pooling" bottom: "conv10" top: "pool10" '
        "pooling_param { pool: AVE global_pooling: true } }",
        'layer { name: "prob" type: "Softmax" bottom: "pool10" top: "prob" }',
    ]
    return "\n".join(lines) + "\n"


def trained_like(layer, rng: np.random.Generator, density: float) -> SparseWeight:
    """Kept weights at ``density``, codes peaked on the middle of a sorted codebook."""
    count = max(1, int(layer.weight_size * density))
    positions = np.sort(rng.choice(layer.weight_size, count, replace=False))
    n = 2**layer.bits
    codebook = np.concatenate([[0.0], np.sort(rng.standard_normal(n - 1) * 0.05)]).astype(np.float32)
    p = np.exp(-np.abs(np.arange(1, n) - n / 2) / (n / 10))
    codes = rng.choice(np.arange(1, n), count, p=p / p.sum()).astype(np.uint8)
    return SparseWeight(
        codebook, rng.standard_normal(layer.bias_size).astype(np.float32) * 0.01, positions, codes
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--density", type=float, default=0.33)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    prototxt = squeezenet_prototxt()
    layers = release_layers(parse(prototxt))
    weights = {la.name: trained_like(la, rng, args.density) for la in layers}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "net.prototxt").write_text(prototxt)
        (tmp / "model.net").write_bytes(encode_release(layers, weights))
        model = read_net(tmp / "model.net", tmp / "net.prototxt")
        with dcformat.Writer(tmp / "model.dcnn", source=model.source) as writer:
            for w in model.weights():
                writer.add_encoded(compress_weight(w, SAFE).encoded)
        size = (tmp / "model.dcnn").stat().st_size
        with dcformat.safe_open(tmp / "model.dcnn") as f:
            header = f.preamble.header_length
            sections = [s for t in f.header.tensors for s in sections_of(t)]
            payload = sum(s.length for s in sections)
            padding = (
                sum(align_up(s.length) - s.length for s in sections[:-1])
                + f.preamble.data_start
                - 24
                - header
            )
            books = sum(len(t.codebook.values) for t in f.header.tensors)
            tables = sum(len(t.codes.code_lengths) + len(t.gaps.code_lengths) for t in f.header.tensors)
            src = f.header.source
            skeleton = len(src.skeleton) + len(src.skeleton_zstd)
            print(f"layers {len(layers)}, tensors {len(f.keys())}, format {f.version}")
            print(f"release .net file        {(tmp / 'model.net').stat().st_size:>10,} bytes")
            print(f".dcnn file               {size:>10,} bytes")
            print(f"  tensor payload         {payload:>10,}  (sections)")
            print(f"  codebooks              {books:>10,}  (in the header)")
            print(f"  code-length tables     {tables:>10,}  (in the header)")
            how = "zstd" if src.skeleton_zstd else "plain"
            print(f"  source skeleton        {skeleton:>10,}  ({len(prototxt):,} as text, stored {how})")
            print(f"  other header bytes     {header - books - tables - skeleton:>10,}")
            print(f"  padding + preamble     {padding + 24:>10,}")
            print(f"overhead over payload + codebooks: {size / (payload + books) - 1:.2%}")
            plain = size - skeleton + len(prototxt)  # within the header's alignment
            print(
                f"with the skeleton stored plain (1.0): ~{plain:,} bytes, {plain / (payload + books) - 1:.2%}"
            )


if __name__ == "__main__":
    main()
