"""Where the bytes of a converted release (.net) file go: a SqueezeNet-v1.0-shaped release
file (26 conv layers, 52 tensors, 8-bit codes, synthetic trained-like codes at ``--density``)
converted with the safe data-free settings, its size split into tensor payload, codebooks and
the rest (header records, source skeleton, section padding), written compact (format 1.2:
packed tables and codebooks, no padding before sections that need no alignment) and as a 1.1
writer wrote it (``compact=False``), side by side.

    python benchmarks/caffe_overhead.py [--density D] [--seed S]
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
from pathlib import Path

import numpy as np
from google.protobuf.message import Message

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dcformat
from converters.compress.config import SAFE
from converters.compress.tensor import compress_weight
from converters.formats.caffe_release.prototxt import parse
from converters.formats.caffe_release.read import read_net
from converters.formats.caffe_release.release import SparseWeight, encode_release
from converters.formats.caffe_release.shapes import release_layers
from dcformat import dcnn_pb2 as pb
from dcformat.encodings.base import sections_of
from dcformat.file.header import inflate_header
from dcformat.layout import PREAMBLE

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
        encoded = [compress_weight(w, SAFE).encoded for w in model.weights()]
        rows = {}
        for compact in (False, True):
            path = tmp / f"model-{compact}.dcnn"
            with dcformat.Writer(path, source=model.source, compact=compact) as writer:
                for e in encoded:
                    writer.add_encoded(pickle.loads(pickle.dumps(e)))  # each writer packs its own copy
            rows[compact] = breakdown(path)
            assert all(
                np.array_equal(a, b)
                for a, b in zip(*map(_loaded, (path, tmp / "model-False.dcnn")), strict=False)
            )
        float32_books = sum(len(t.codebook.values) for t in _header(tmp / "model-False.dcnn")[2].tensors)
        print(f"layers {len(layers)}, tensors {len(encoded)}, density {args.density}, seed {args.seed}")
        print(f"release .net file        {(tmp / 'model.net').stat().st_size:>10,} bytes")
        print(f"{'':24} {'1.1 writer':>10} {'compact':>10}")
        for key in rows[False]:
            print(f"  {key:22} {rows[False][key]:>10,} {rows[True][key]:>10,}")
        for compact, label in ((False, "1.1 writer"), (True, "compact")):
            r = rows[compact]
            print(
                f"{label}: file / (payload + float32 codebooks) - 1 = "
                f"{r['file'] / (r['tensor payload'] + float32_books) - 1:+.2%}"
            )


def breakdown(path: Path) -> dict[str, int]:
    """Where the file's bytes go. The header's parts are counted as serialized before the
    header's own compression (packed fields not expanded); "header zstd" is what that saved."""
    data, minor, header = _header(path)
    length = PREAMBLE.unpack(data[:24])[3]
    tensors = list(header.tensors)
    streams = [getattr(t, s) for t in tensors for s in ("codes", "gaps") if t.HasField(s)]
    sections = [s for t in tensors for s in sections_of(t)]
    payload = sum(s.length for s in sections)
    parts = {
        "codebooks": sum(_field(t.codebook, "values") + _field(t.codebook, "values_packed") for t in tensors),
        "code-length tables": sum(
            _field(s, "code_lengths") + _field(s, "code_lengths_packed") for s in streams
        ),
        "source skeleton": _field(header.source, "skeleton") + _field(header.source, "skeleton_zstd"),
        "tensor names": sum(_field(t, "name") for t in tensors),
        "section records": sum(len(s.SerializeToString()) + 2 for s in sections),
        "chunk offsets": sum(_field(s, "chunk_offsets") for s in streams),
    }
    plain = len(header.SerializeToString(deterministic=True))
    return {
        "file": len(data),
        "minor version": minor,
        "tensor payload": payload,
        **parts,
        "other header bytes": plain - sum(parts.values()),
        "header zstd": length - plain,
        "padding + preamble": len(data) - length - payload,
    }


def _header(path: Path) -> tuple[bytes, int, pb.Header]:
    """The file's bytes, minor version and header (decompressed when it is stored compressed)."""
    data = path.read_bytes()
    minor, length = PREAMBLE.unpack(data[:24])[2:4]
    stored = pb.Header.FromString(data[24 : 24 + length])
    return data, minor, inflate_header(stored, minor)


def _field(message: Message, name: str) -> int:
    """The serialized size of one field of a message."""
    alone = type(message)()
    value = getattr(message, name)
    if isinstance(value, bytes | str | int):
        setattr(alone, name, value)
    else:
        getattr(alone, name).extend(value)
    return len(alone.SerializeToString())


def _loaded(path: Path) -> list[np.ndarray]:
    return list(dcformat.load_file(path).values())


if __name__ == "__main__":
    main()
