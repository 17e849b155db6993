"""The native Huffman decode kernel alone, on MiniLM's streams: ns per code, this build against another.

For three streams of all-MiniLM-L6-v2 as `make demo` writes it (the 11.7M-code embedding, a
590k-code and a 147k-code weight matrix), one `_native.decode` call per stream decodes every
chunk into float32 values on one thread: into an output already written ("warm": the kernel
alone) and into a fresh anonymous mapping ("fresh": with the page faults a new array takes).
Thread CPU time, best and median of interleaved rounds. ``--against`` names another build of
the extension (a `_native*.so` built from an older `_native.c`, e.g. with
``gcc -shared -fPIC -O3 -I$(python -c "import sysconfig; print(sysconfig.get_paths()['include'])")
_native.c -o old.so``) to time side by side in the same rounds.

    python benchmarks/decode_kernel.py [--rounds 30] [--against OLD.so]
"""

from __future__ import annotations

import argparse
import importlib.util
import mmap
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import minilm

import dcformat
from dcformat.codec import decode
from dcformat.encodings import coded

STREAMS = (
    "embeddings.word_embeddings.weight",
    "encoder.layer.2.intermediate.dense.weight",
    "encoder.layer.0.attention.self.query.weight",
)


def load_build(path: Path) -> object:
    spec = importlib.util.spec_from_file_location("dcformat.codec._native", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--against", type=Path, help="another build of dcformat.codec._native")
    args = parser.parse_args()
    if not decode.AVAILABLE:
        raise SystemExit("the native extension is not built")
    builds = {"this build": decode._native}
    if args.against:
        builds[args.against.name] = load_build(args.against)
    isa = getattr(decode._native, "DECODE_ISA", "?")
    print(f"kernel set of this build: {isa}; {args.rounds} rounds; thread CPU ns per code, best / median")
    with tempfile.TemporaryDirectory() as tmp:
        _, path = minilm(Path(tmp))
        with dcformat.safe_open(path) as f:
            print("\n| stream | codes | output | " + " | ".join(builds) + " |")
            print("|---|---:|---|" + "---:|" * len(builds))
            for name in STREAMS:
                record = f._record(name)
                stream = f.stream(record.codes)
                values, flags = coded.values_and_flags(f, record, "float32")
                warm = np.zeros(stream.count, np.float32)
                for output in ("warm", "fresh"):
                    times: dict[str, list[float]] = {b: [] for b in builds}
                    for _ in range(args.rounds):
                        for label, module in builds.items():
                            buffer = mmap.mmap(-1, stream.count * 4) if output == "fresh" else None
                            out = np.frombuffer(buffer, np.float32) if buffer is not None else warm
                            start = time.thread_time()
                            module.decode(
                                stream.data,
                                stream.bit_length,
                                stream.lengths,
                                stream.chunk_size,
                                stream.offsets,
                                stream.count,
                                0,
                                stream.n_chunks,
                                values,
                                4,
                                flags,
                                out,
                                False,
                            )
                            times[label].append(time.thread_time() - start)
                            del out
                            if buffer is not None:
                                buffer.close()
                    cells = [
                        f"{min(t) / stream.count * 1e9:.2f} / {statistics.median(t) / stream.count * 1e9:.2f}"
                        for t in times.values()
                    ]
                    print(f"| {name} | {stream.count:,} | {output} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
