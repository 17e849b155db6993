"""DENSE_CODES: one Huffman-coded codebook index per element (spec section 5)."""

from __future__ import annotations

import numpy as np

from .. import dcnn_pb2 as pb
from ..codec import decode as codec
from ..errors import EncodeError, FormatError, fail, stop
from ..layout import MAX_EXPANSION
from ..tensors import Codes, Quantized, Raw
from . import coded
from .base import EncodedTensor, SectionSource, expansion_ok, new_in

ENUM = pb.DENSE_CODES
NAME = "DENSE_CODES"
entries_and_bits = coded.entries_and_bits


def accepts(tensor: Raw | Quantized) -> bool:
    return isinstance(tensor, Quantized) and not tensor.sparse and not tensor.extended


def encode(name: str, tensor: Quantized, chunk_size: int) -> EncodedTensor:
    record, freqs = coded.new_coded_record(name, tensor, pb.DENSE_CODES)
    payloads = coded.encode_stream(record.codes, tensor.codes, freqs, chunk_size)
    if not expansion_ok(coded.decoded_bytes_of(tensor), len(payloads[0][1]) if payloads else 0):
        raise EncodeError(f"tensor {name!r} would decode to over {MAX_EXPANSION}x its stored size")
    return EncodedTensor(record, payloads)


def check(record: pb.Tensor, dtype: str, numel: int, decoded_bytes: int) -> None:
    coded.check_codebook(record, dtype)
    if record.HasField("gaps") or record.HasField("index_bits"):
        fail(FormatError("a DENSE_CODES tensor has sparse fields", rule="encoding"))
    if record.codes.count != numel:
        stop(FormatError(f"{record.codes.count} codes for {numel} elements", rule="counts"))


def decode(source: SectionSource, record: pb.Tensor, out_kind: str) -> tuple[np.ndarray, int]:
    values, flags = coded.values_and_flags(source, record, out_kind)
    return codec.decode_values(source.stream(record.codes), values, flags, source.threads, new_in(source))


def nonzero_entries(source: SectionSource, record: pb.Tensor) -> None:
    return None


def codes(source: SectionSource, record: pb.Tensor) -> Codes:
    symbols = source.symbols(record.codes).reshape(tuple(record.shape))
    return Codes(coded.codebook(record), symbols, None, tuple(record.shape))
