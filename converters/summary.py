"""Per-tensor rows and tables: what dcnn-inspect shows, and the summary of a conversion."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dcformat import DcnnFile, TensorInfo


@dataclass(frozen=True)
class TensorRow:
    """One tensor of a .dcnn file; ``error`` (relative RMS error) is known only at conversion."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    encoding: str
    numel: int
    nonzeros: int
    weight_bits: int
    index_bits: int
    stored_bytes: int
    dense_bytes: int
    error: float | None = None

    @classmethod
    def of(cls, info: TensorInfo, error: float | None = None) -> TensorRow:
        return cls(
            info.name,
            info.shape,
            info.dtype,
            info.encoding,
            info.numel,
            info.nonzeros,
            info.weight_bits,
            info.index_bits,
            info.stored_bytes,
            info.dense_bytes,
            error,
        )

    @property
    def kept(self) -> float:
        """Fraction of nonzero elements."""
        return self.nonzeros / self.numel if self.numel else 1.0

    @property
    def ratio(self) -> float | None:
        """Dense bytes over the bytes of the tensor's sections (None when it has none)."""
        return self.dense_bytes / self.stored_bytes if self.stored_bytes else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape), "kept": self.kept, "ratio": self.ratio}


def rows_of(dcnn: DcnnFile, errors: Mapping[str, float] | None = None) -> list[TensorRow]:
    """A row per tensor of an open file, from its header alone."""
    errors = errors or {}
    return [TensorRow.of(dcnn.info(name), errors.get(name)) for name in dcnn.keys()]


def totals(rows: Sequence[TensorRow], file_bytes: int) -> dict[str, Any]:
    """Dense bytes of all tensors, the whole file's bytes and their ratio."""
    dense = sum(r.dense_bytes for r in rows)
    return {
        "tensors": len(rows),
        "dense_bytes": dense,
        "file_bytes": file_bytes,
        "ratio": dense / file_bytes if file_bytes else None,
    }


def format_table(rows: Sequence[TensorRow], file_bytes: int) -> str:
    """Rows as an aligned text table, with a totals line (the ratio counts the whole file)."""
    with_error = any(r.error is not None for r in rows)
    head = ["tensor", "shape", "dtype", "encoding", "kept", "w.bits", "idx.bits", "bytes", "ratio"]
    head += ["error"] if with_error else []
    lines = [head]
    for r in rows:
        cells = [
            r.name,
            "x".join(map(str, r.shape)) or "scalar",
            r.dtype,
            r.encoding,
            f"{100 * r.kept:.1f}%",
            str(r.weight_bits),
            str(r.index_bits) if r.index_bits else "-",
            f"{r.stored_bytes:,}",
            "-" if r.ratio is None else f"{r.ratio:.1f}x",
        ]
        if with_error:
            cells.append("-" if r.error is None else f"{r.error:.2e}")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]

    def aligned(cells: list[str]) -> str:  # text columns left, numbers right
        padded = [
            c.rjust(w) if i >= 4 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    text = [aligned(line) for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    t = totals(rows, file_bytes)
    ratio = "-" if t["ratio"] is None else f"{t['ratio']:.2f}x"
    text.append(
        f"{t['tensors']} tensors: {t['dense_bytes']:,} bytes dense, {file_bytes:,} bytes in the file, {ratio}"
    )
    return "\n".join(text)
