"""Per-tensor tables and JSON rows: what dcnn-inspect shows, and the summary of a conversion.

Everything comes from the header (``DcnnFile.info``); a conversion adds each tensor's
relative RMS error, known only while converting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from dcformat import TensorInfo


def kept(info: TensorInfo) -> float:
    """Fraction of nonzero elements."""
    return info.nonzeros / info.numel if info.numel else 1.0


def ratio(info: TensorInfo) -> float | None:
    """Dense bytes over the bytes of the tensor's sections (None when it has none)."""
    return info.dense_bytes / info.stored_bytes if info.stored_bytes else None


def row(info: TensorInfo, error: float | None = None) -> dict[str, Any]:
    """A tensor as plain data (JSON-ready)."""
    return {
        **asdict(info),
        "shape": list(info.shape),
        "numel": info.numel,
        "dense_bytes": info.dense_bytes,
        "kept": kept(info),
        "ratio": ratio(info),
        "error": error,
    }


def totals(infos: Sequence[TensorInfo], file_bytes: int) -> dict[str, Any]:
    """Dense bytes of all tensors, the whole file's bytes and their ratio."""
    dense = sum(info.dense_bytes for info in infos)
    return {
        "tensors": len(infos),
        "dense_bytes": dense,
        "file_bytes": file_bytes,
        "ratio": dense / file_bytes if file_bytes else None,
    }


def aligned(head: Sequence[str], rows: Sequence[Sequence[str]], first_number: int) -> list[str]:
    """Lines of a text table: a header, a rule, then the rows; the columns from
    ``first_number`` on are numbers, aligned right, the others left."""
    lines = [list(head), *map(list, rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.rjust(w) if i >= first_number else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    return [line(lines[0]), "  ".join("-" * w for w in widths), *map(line, lines[1:])]


def format_table(
    infos: Sequence[TensorInfo], file_bytes: int, errors: Mapping[str, float] | None = None
) -> str:
    """An aligned text table with a totals line (whose ratio counts the whole file)."""
    head = ["tensor", "shape", "dtype", "encoding", "kept", "w.bits", "idx.bits", "bytes", "ratio"]
    head += ["error"] if errors else []
    lines = [head]
    for info in infos:
        tensor_ratio = ratio(info)
        cells = [
            info.name,
            "x".join(map(str, info.shape)) or "scalar",
            info.dtype,
            info.encoding,
            f"{100 * kept(info):.1f}%",
            str(info.weight_bits),
            str(info.index_bits) if info.index_bits else "-",
            f"{info.stored_bytes:,}",
            "-" if tensor_ratio is None else f"{tensor_ratio:.1f}x",
        ]
        if errors:
            cells.append(f"{errors[info.name]:.2e}")
        lines.append(cells)
    text = aligned(lines[0], lines[1:], first_number=4)
    t = totals(infos, file_bytes)
    total_ratio = "-" if t["ratio"] is None else f"{t['ratio']:.2f}x"
    text.append(
        f"{t['tensors']} tensors: {t['dense_bytes']:,} bytes dense, {file_bytes:,} bytes in the file, "
        f"{total_ratio}"
    )
    return "\n".join(text)
