"""The Deep Compression release format (``.net``), as the authors' ``decode.py`` reads it.

Layout: one little-endian uint32 per layer (its number of stored entries), then per layer
the codebook (``2**bits`` float32), the bias (float32), the codes (8 bits: one byte per
entry; 4 bits: two per byte, first in the low nibble) and the relative indices (4 bits per
entry, two per byte, first in the low nibble). Entry ``i`` sits at flat position
``cumsum(gap + 1)[i] - 1``; filler entries (gap 15, code 0) bridge gaps longer than 15.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from dcformat.errors import DcnnError

MAX_GAP = 15  # largest relative index a 4-bit field holds


class CaffeImportError(DcnnError, ValueError):
    """A Caffe release file or prototxt that cannot be imported."""

    rule = "caffe-import"


@dataclass(frozen=True)
class ReleaseLayer:
    """One layer stored in a ``.net`` file: its name and blob shapes from the prototxt."""

    name: str
    weight_shape: tuple[int, ...]
    bias_size: int

    @property
    def bits(self) -> int:
        """Code width: 8 for layers named ``*conv*``, 4 for the rest."""
        return 8 if "conv" in self.name else 4

    @property
    def weight_size(self) -> int:
        return int(np.prod(self.weight_shape, dtype=np.int64))


@dataclass(frozen=True)
class ReleaseTensor:
    """One layer as stored in a ``.net`` file; ``codes``/``gaps``/``positions`` per entry."""

    layer: ReleaseLayer
    codebook: np.ndarray  # (2**bits,) float32
    bias: np.ndarray  # (bias_size,) float32
    codes: np.ndarray  # (entries,) uint8, fillers included
    gaps: np.ndarray  # (entries,) uint8
    positions: np.ndarray  # (entries,) int64, flat row-major, strictly increasing
    offset: int  # byte offset of the layer's codebook in the file


class SparseWeight(NamedTuple):
    """A layer to encode: codebook, bias, and the code at each (sorted) flat position."""

    codebook: np.ndarray
    bias: np.ndarray
    positions: np.ndarray
    codes: np.ndarray


def _packed_size(entries: int, bits: int) -> int:
    """Bytes holding ``entries`` values of ``bits`` bits (the decoder's ``(n-1)//k + 1``)."""
    per_byte = 8 // bits
    return (entries - 1) // per_byte + 1


def _unpack_nibbles(packed: np.ndarray, entries: int) -> np.ndarray:
    out = np.empty(2 * packed.size, np.uint8)
    out[0::2] = packed & 0x0F
    out[1::2] = packed >> 4
    return out[:entries]


def _pack_nibbles(values: np.ndarray) -> np.ndarray:
    padded = np.zeros(2 * _packed_size(values.size, 4), np.uint8)
    padded[: values.size] = values
    return padded[0::2] | (padded[1::2] << 4)


def read_release(data: bytes, layers: Sequence[ReleaseLayer]) -> list[ReleaseTensor]:
    """Parse a ``.net`` file's bytes for ``layers`` (see ``shapes.release_layers``).

    Raises ``CaffeImportError`` naming the layer and byte offset when the file and the
    prototxt disagree: truncated header or sections, positions past the end of a weight,
    or bytes left over after the last layer.
    """
    buf = np.frombuffer(data, np.uint8)
    header_size = 4 * len(layers)
    if buf.size < header_size:
        raise CaffeImportError(
            f"truncated header: {len(layers)} layers need {header_size} bytes, "
            f"the file has {buf.size} (at byte offset 0)"
        )
    counts = buf[:header_size].view("<u4").astype(np.int64)
    pos = header_size

    def take(layer: ReleaseLayer, what: str, nbytes: int) -> np.ndarray:
        nonlocal pos
        if pos + nbytes > buf.size:
            raise CaffeImportError(
                f"layer {layer.name!r}: {what} needs {nbytes} bytes at byte offset {pos}, "
                f"only {buf.size - pos} left"
            )
        chunk = buf[pos : pos + nbytes]
        pos += nbytes
        return chunk

    tensors = []
    for layer, entries in zip(layers, counts.tolist(), strict=True):
        offset = pos
        codebook = take(layer, "codebook", 4 * 2**layer.bits).view("<f4").astype(np.float32)
        bias = take(layer, "bias", 4 * layer.bias_size).view("<f4").astype(np.float32)
        packed_codes = take(layer, "codes", _packed_size(entries, layer.bits))
        index_offset = pos
        gaps = _unpack_nibbles(take(layer, "indices", _packed_size(entries, 4)), entries)
        codes = packed_codes.copy() if layer.bits == 8 else _unpack_nibbles(packed_codes, entries)
        positions = np.cumsum(gaps.astype(np.int64) + 1) - 1
        if entries and positions[-1] >= layer.weight_size:
            first = int(np.searchsorted(positions, layer.weight_size))
            raise CaffeImportError(
                f"layer {layer.name!r}: entry {first} of {entries} lands at position "
                f"{positions[first]}, past the end of its {layer.weight_size}-element weight "
                f"{layer.weight_shape} (index byte offset {index_offset + first // 2})"
            )
        tensors.append(ReleaseTensor(layer, codebook, bias, codes, gaps, positions, offset))
    if pos != buf.size:
        last = repr(layers[-1].name) if layers else "(none)"
        raise CaffeImportError(
            f"{buf.size - pos} bytes left over at byte offset {pos}, after the last layer {last}"
        )
    return tensors


def dense_codes(tensor: ReleaseTensor) -> np.ndarray:
    """The code of every weight element, shaped like the weight: 0 where no entry is written."""
    full = np.zeros(tensor.layer.weight_size, np.uint8)
    full[tensor.positions] = tensor.codes
    return full.reshape(tensor.layer.weight_shape)


def decode_dense(tensor: ReleaseTensor) -> tuple[np.ndarray, np.ndarray]:
    """The release decoder's output: ``codebook[code]`` at every weight position
    (code 0 where no entry is written), and the bias."""
    return tensor.codebook[dense_codes(tensor)], tensor.bias.copy()


def encode_release(layers: Sequence[ReleaseLayer], weights: Mapping[str, SparseWeight]) -> bytes:
    """Write a ``.net`` file; gaps longer than 15 get filler entries (gap 15, code 0)."""
    header = np.zeros(len(layers), "<u4")
    body = []
    for i, layer in enumerate(layers):
        w = weights[layer.name]
        codebook = np.asarray(w.codebook, np.float32)
        bias = np.asarray(w.bias, np.float32)
        positions = np.asarray(w.positions, np.int64)
        codes = np.asarray(w.codes)
        if codebook.shape != (2**layer.bits,) or bias.shape != (layer.bias_size,):
            raise ValueError(
                f"layer {layer.name!r}: codebook {codebook.shape} / bias {bias.shape}, "
                f"expected ({2**layer.bits},) / ({layer.bias_size},)"
            )
        if codes.shape != positions.shape or positions.ndim != 1:
            raise ValueError(f"layer {layer.name!r}: codes and positions must be equal 1-D")
        if codes.size and (codes.min() < 0 or codes.max() >= 2**layer.bits):
            raise ValueError(f"layer {layer.name!r}: codes out of range for {layer.bits} bits")
        gaps = np.diff(positions, prepend=-1) - 1
        if positions.size and (gaps.min() < 0 or positions[-1] >= layer.weight_size):
            raise ValueError(f"layer {layer.name!r}: positions must increase within the weight")
        fillers = gaps // (MAX_GAP + 1)
        slots = np.cumsum(fillers + 1) - 1  # where each real entry lands among all entries
        entries = int(slots[-1]) + 1 if slots.size else 0
        all_gaps = np.full(entries, MAX_GAP, np.uint8)
        all_codes = np.zeros(entries, np.uint8)
        all_gaps[slots] = gaps % (MAX_GAP + 1)
        all_codes[slots] = codes
        header[i] = entries
        body += [
            codebook.astype("<f4").tobytes(),
            bias.astype("<f4").tobytes(),
            (all_codes if layer.bits == 8 else _pack_nibbles(all_codes)).tobytes(),
            _pack_nibbles(all_gaps).tobytes(),
        ]
    return header.tobytes() + b"".join(body)
