"""sha256 of the files dcnn-convert writes for MiniLM (the default chooser, ``--snr off``,
``--bits 4``) and for a one-layer bfloat16 model shaped like benchmarks/memory.py's (the
default, ``--bits 4``), one worker. Run it with another tree first on the import path to
check that a change leaves the bytes alone:

    PYTHONPATH=/path/to/old/tree python benchmarks/same_bytes.py --dir /tmp/a
    python benchmarks/same_bytes.py --dir /tmp/b
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))  # examples/, after PYTHONPATH's trees

import memory  # benchmarks/memory.py: the bfloat16 model

from converters.cli import convert_main
from examples.minilm import model_dir


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, required=True, help="work here (the files are kept)")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    minilm, bf16 = model_dir() / "model.safetensors", args.dir / "bf16.safetensors"
    if not bf16.exists():
        memory.write_model(bf16, 1)
    runs = {
        "minilm default": (minilm, []),
        "minilm --snr off": (minilm, ["--snr", "off"]),
        "minilm --bits 4": (minilm, ["--bits", "4"]),
        "bfloat16 default": (bf16, []),
        "bfloat16 --bits 4": (bf16, ["--bits", "4"]),
    }
    print("| conversion | bytes | sha256 |\n|---|---:|---|")
    for label, (source, options) in runs.items():
        out = args.dir / (label.replace(" ", "_").replace("--", "") + ".dcnn")
        if convert_main([str(source), "-o", str(out), "-q", "--force", "--workers", "1", *options]):
            sys.exit(f"dcnn-convert failed for {label}")
        print(
            f"| {label} | {out.stat().st_size:,} | {hashlib.sha256(out.read_bytes()).hexdigest()} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
