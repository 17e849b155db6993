"""``dcnn-inspect --plot``: per layer, the weights' distribution with the centroids on it (the
paper's Figure 5), and the bits and relative error of every tensor. matplotlib is optional."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from dcformat import dtypes as dcnn_dtypes
from dcformat import safe_open

from .errors import ConvertError

MAX_PANELS = 12  # the largest coded tensors get a histogram each


def plot_file(path: str | Path, out: str | Path) -> Path:
    """Draw ``path``'s tensors into the PNG ``out`` (written atomically); returns ``out``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConvertError("--plot needs matplotlib: pip install 'dcnn[plot]'", rule="usage") from None
    from dcformat import replacing

    with safe_open(path) as f:
        infos = [f.info(name) for name in f.keys()]
        errors = json.loads(f.source().attributes.get("errors", "{}"))
        coded = [i for i in infos if "CODES" in i.encoding and i.dtype in dcnn_dtypes.FLOAT_NAMES]
        shown = sorted(coded, key=lambda i: -i.numel)[:MAX_PANELS]
        panels = [(info, f.get_codes(info.name)) for info in sorted(shown, key=infos.index)]
    columns = 3
    rows = math.ceil(len(panels) / columns) + 1
    fig = plt.figure(figsize=(5 * columns, 3.2 * rows), layout="constrained")
    grid = fig.add_gridspec(rows, columns)
    for n, (info, codes) in enumerate(panels):
        ax = fig.add_subplot(grid[n // columns, n % columns])
        counts = np.bincount(np.asarray(codes.codes, np.int64).reshape(-1), minlength=codes.codebook.size)
        values = codes.codebook.astype(np.float64)
        if codes.positions is not None:  # sparse: the unstored elements are the padding zero
            counts[0] += info.numel - int(codes.codes.size)
        order = np.argsort(values)
        values, counts = values[order], counts[order]
        # the weights' density: each centroid's count spread over the interval it decodes
        edges = np.concatenate(([values[0]], (values[:-1] + values[1:]) / 2, [values[-1]]))
        widths = np.maximum(np.diff(edges), 1e-12)
        ax.stairs(counts / widths / max(info.numel, 1), edges, fill=True, alpha=0.35, color="tab:blue")
        ax.vlines(values, 0, ax.get_ylim()[1], color="tab:red", linewidth=0.4, alpha=0.7)
        ax.set_yscale("log")
        error = errors.get(info.name)
        title = f"{info.name}\n{info.weight_bits} bits, {codes.codebook.size} centroids"
        ax.set_title(title + ("" if error is None else f", error {error:.2e}"), fontsize=8)
        ax.tick_params(labelsize=7)
    ax = fig.add_subplot(grid[rows - 1, :])
    x = np.arange(len(infos))
    ax.bar(x, [i.weight_bits if i.encoding != "RAW" else 0 for i in infos], color="tab:blue")
    ax.set_ylabel("weight bits (0: exact; 16: float16)", fontsize=8)
    twin = ax.twinx()
    twin.plot(x, [errors.get(i.name, 0.0) for i in infos], "o-", color="tab:red", markersize=3)
    twin.set_ylabel("relative RMS error", color="tab:red", fontsize=8)
    ax.set_xticks(x, [i.name for i in infos], rotation=90, fontsize=5)
    fig.suptitle(f"{Path(path).name}: {len(infos)} tensors", fontsize=10)
    with replacing(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(out)
