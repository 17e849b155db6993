"""The compression report: a per-tensor table and per-stage size totals, like the paper's.

Stage sizes, per tensor (tensors stored exactly keep their original size until the last stage):

- original: elements x the dtype's bytes;
- after pruning: the smaller of dense (elements x dtype bits) and sparse, where sparse is the
  paper's relative indexing: each stored entry holds a full-precision value and a ``b``-bit
  gap to the previous entry, a gap above 2**b costing extra zero filler entries, ``b`` chosen
  in 1..16 to minimize the total;
- after quantization: the same with ``weight bits`` per value instead of dtype bits, plus the
  codebook (4 bytes per stored centroid);
- after Huffman: the tensor's real cost in the .dcnn file (``dcformat.stored_size``).

The whole file, header included, is reported apart once it is written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..summary import aligned


def relative_index_cost(survivors: np.ndarray, value_bits: int) -> tuple[int, int]:
    """``(bits, index_bits)``: the cheapest relative-index layout of the surviving entries.

    ``survivors`` are strictly increasing flat indices, or a boolean mask of the entries; entry
    j stores the gap to the previous entry (the first to -1) in ``index_bits`` bits, and a gap
    d takes ``ceil(d / 2**b)`` entries.
    """
    count, fillers = _gaps_over_one(np.asarray(survivors))
    best = (np.iinfo(np.int64).max, 0)
    for b in range(1, 17):
        extra = int((fillers >> b).sum())  # the filler entries the gaps need at b bits
        best = min(best, ((extra + count) * (value_bits + b), b))
        if not extra:  # wider gaps only cost more from here on
            break
    return best


def _gaps_over_one(survivors: np.ndarray) -> tuple[int, np.ndarray]:
    """The number of surviving entries, and ``gap - 1`` of each gap over 1 (only those add
    filler entries). A mask with more survivors than not is read from its runs of non-survivors
    (the few), never from a position per survivor."""
    if survivors.dtype != bool:
        gaps = np.diff(survivors.astype(np.int64, copy=False), prepend=-1)
        return len(gaps), gaps[gaps > 1] - 1
    count = int(np.count_nonzero(survivors))
    if 2 * count <= survivors.size:
        return _gaps_over_one(np.flatnonzero(survivors))
    dead = np.flatnonzero(~survivors.reshape(-1))
    if not dead.size:
        return count, dead
    breaks = np.flatnonzero(np.diff(dead) != 1)
    starts = dead[np.concatenate(([0], breaks + 1))]
    ends = dead[np.concatenate((breaks, [dead.size - 1]))]
    followed = ends + 1 < survivors.size  # a run at the end precedes no survivor
    return count, (ends - starts + 1)[followed]


def sparse_may_win(nonzeros: int, numel: int, value_bits: int) -> bool:
    """Whether the relative-index layout of ``nonzeros`` entries can beat the dense one: it
    takes at least one ``value_bits + 1``-bit entry per nonzero."""
    return nonzeros * (value_bits + 1) < numel * value_bits


def stage_bytes(survivors: np.ndarray | None, numel: int, value_bits: int) -> int:
    """Bytes of the smaller of the dense and the relative-index layouts (without codebook).

    ``survivors``: the nonzero entries' positions or mask (see :func:`relative_index_cost`);
    None when the tensor has no zeros.
    """
    dense = numel * value_bits
    if survivors is None:
        return -(-dense // 8)
    survivors = np.asarray(survivors)
    count = int(np.count_nonzero(survivors)) if survivors.dtype == bool else len(survivors)
    if not sparse_may_win(count, numel, value_bits):
        return -(-dense // 8)
    sparse = relative_index_cost(survivors, value_bits)[0]
    return -(-min(dense, sparse) // 8)


@dataclass(frozen=True)
class TensorReport:
    """One row of the table."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    encoding: str  # RAW, DENSE_CODES or SPARSE_CODES
    nonzeros: int
    weight_bits: int | None
    index_bits: int | None
    original_bytes: int
    pruned_bytes: int
    quantized_bytes: int
    stored_bytes: int
    error: float = 0.0  # relative RMS error of the stored tensor against the weight given

    @property
    def numel(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def kept(self) -> float:
        """Fraction of nonzero elements."""
        return self.nonzeros / self.numel if self.numel else 1.0

    @property
    def ratio(self) -> float:
        """Original bytes / stored bytes."""
        return self.original_bytes / self.stored_bytes


STAGES = {
    "original": "original_bytes",
    "pruned": "pruned_bytes",
    "quantized": "quantized_bytes",
    "huffman": "stored_bytes",
}


@dataclass
class CompressionReport:
    """Per-tensor rows, optional metrics measured after each stage, and the file size."""

    tensors: list[TensorReport]
    metrics: dict[str, float] = field(default_factory=dict)
    file_bytes: int | None = None

    def stage_totals(self) -> dict[str, int]:
        """Total bytes after each stage (``file`` too once the file is written)."""
        totals = {stage: sum(getattr(t, attr) for t in self.tensors) for stage, attr in STAGES.items()}
        if self.file_bytes is not None:
            totals["file"] = self.file_bytes
        return totals

    def stage_ratios(self) -> dict[str, float]:
        """Original bytes / bytes after each stage."""
        totals = self.stage_totals()
        return {stage: totals["original"] / size for stage, size in totals.items()}

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        ratios = self.stage_ratios()
        return {
            "tensors": [
                {**asdict(t), "shape": list(t.shape), "kept": t.kept, "ratio": t.ratio} for t in self.tensors
            ],
            "stages": {
                stage: {"bytes": size, "ratio": ratios[stage]} for stage, size in self.stage_totals().items()
            },
            "metrics": dict(self.metrics),
            "file_bytes": self.file_bytes,
        }

    def format_table(self) -> str:
        """The report as a text table."""
        head = ["tensor", "shape", "encoding", "kept", "w.bits", "idx.bits", "bytes", "ratio", "error"]
        rows = [
            [
                t.name,
                "x".join(map(str, t.shape)) or "scalar",
                t.encoding,
                f"{100 * t.kept:.1f}%",
                "-" if t.weight_bits is None else str(t.weight_bits),
                "-" if t.index_bits is None else str(t.index_bits),
                f"{t.stored_bytes:,}",
                f"{t.ratio:.1f}x",
                f"{t.error:.2e}",
            ]
            for t in self.tensors
        ]
        out = aligned(head, rows, first_number=3)
        labels = {
            "original": "original",
            "pruned": "after pruning",
            "quantized": "after quantization",
            "huffman": "after Huffman",
            "file": "whole file",
        }
        out.append("")
        ratios = self.stage_ratios()
        for stage, size in self.stage_totals().items():
            out.append(f"{labels[stage]:<20} {size:>12,} bytes  {ratios[stage]:7.1f}x")
        if self.metrics:
            out.append("")
            out.extend(f"{name:<20} {value:.4f}" for name, value in self.metrics.items())
        return "\n".join(out)

    def __str__(self) -> str:
        return self.format_table()
