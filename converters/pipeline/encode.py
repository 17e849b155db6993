"""Pick the cheapest .dcnn encoding of each tensor, measured by the real writer."""

from __future__ import annotations

import numpy as np

from converters.pipeline.quantize import SharedTensor
from dcformat import Quantized, Raw
from dcformat import encode as encode_tensor
from dcformat.dtypes import convert_floats

ZSTD_LEVEL = 9


def encode_exact(array: np.ndarray, dtype: str | None = None) -> Raw:
    """A tensor stored exactly (zstd-compressed when that is smaller)."""
    return Raw(array, dtype=dtype, zstd_level=ZSTD_LEVEL)


def compact(shared: SharedTensor) -> SharedTensor:
    """Drop unused codebook entries (keeping the zero symbol first) and narrow the codes."""
    k = len(shared.codebook)
    counts = np.bincount(shared.codes.ravel(), minlength=k)
    if shared.zero_symbol:
        counts[0] = 1
    used = np.flatnonzero(counts)
    remap = np.zeros(k, dtype=np.uint16 if len(used) > 256 else np.uint8)
    remap[used] = np.arange(len(used))
    return SharedTensor(shared.codebook[used], remap[shared.codes], shared.zero_symbol)


def candidates(shared: SharedTensor, dtype: str = "float32") -> list[Raw | Quantized]:
    """Every encoding of the shared tensor (best :func:`compact` first), all decoding alike.

    Dense codes; sparse codes at the nonzero codes' positions (only with a zero symbol, whose
    code is 0); and the decoded values stored exactly.
    """
    flat = shared.codes.ravel()
    shape = shared.codes.shape
    out: list[Raw | Quantized] = [Quantized(shared.codebook, flat, shape, dtype=dtype)]
    if shared.zero_symbol:
        positions = np.flatnonzero(flat)
        out.append(Quantized(shared.codebook, flat[positions], shape, positions=positions, dtype=dtype))
    out.append(encode_exact(convert_floats(shared.decode(), dtype), dtype))
    return out


def _lower_bound(option: Raw | Quantized) -> int:
    """Bytes an option costs at least: dense codes take one Huffman bit or more per element."""
    return option.codes.size // 8 if isinstance(option, Quantized) and not option.sparse else 0


def cheapest(name: str, options: list[Raw | Quantized]) -> tuple[Raw | Quantized, int, int | None]:
    """``(tensor, stored bytes, index bits)`` of the option costing the fewest bytes in a file.

    The cost is the writer's own encoding of the tensor under ``name`` (what
    ``dcformat.stored_size`` measures); index bits are those the writer picked (sparse only).
    Options that cannot beat the best so far are not encoded.
    """
    best = None
    for option in sorted(options, key=_lower_bound):
        if best is not None and _lower_bound(option) >= best[1].stored_bytes:
            continue
        encoded = encode_tensor(name, option)
        if best is None or encoded.stored_bytes < best[1].stored_bytes:
            best = (option, encoded)
    option, encoded = best
    bits = encoded.record.index_bits if isinstance(option, Quantized) and option.sparse else None
    return option, encoded.stored_bytes, bits
