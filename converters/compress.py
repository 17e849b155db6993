"""Data-free compression of one tensor: the pipeline's pruning and weight sharing, then the
smallest of the encodings .dcnn offers.

Tensors come one at a time, so a model of any size converts in memory bounded by its
largest tensor.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from dcformat import Quantized, Raw, dtypes, stored_size

from .arrays import float_values
from .errors import ConvertError
from .model_io import Kind, Weight
from .pipeline.config import CompressionConfig, TensorPlan
from .pipeline.prune import prune_array
from .pipeline.quantize import share_weights

RAW_ZSTD_LEVEL = 3  # tensors stored exactly are zstd-compressed when that saves space


def plan_for(config: CompressionConfig, weight: Weight) -> TensorPlan | None:
    """The config's plan for a tensor; a conv/fc ``kind`` the model states beats the shape's."""
    # bfloat16 has no numpy dtype; any float dtype gives the same plan.
    like = np.float32 if weight.dtype == "bfloat16" else weight.array.dtype
    try:
        plan = config.plan(weight.name, weight.array.shape, like)
    except ValueError as exc:
        raise ConvertError(str(exc), rule="usage") from None
    if plan is None or weight.kind is None or weight.kind == plan.kind:
        return plan
    if any(rule.bits is not None for rule in config.rules if rule.matches(weight.name)):
        return replace(plan, kind=weight.kind)
    return replace(plan, kind=weight.kind, bits=_default_bits(config, weight.kind))


def _default_bits(config: CompressionConfig, kind: Kind) -> int:
    return config.conv_bits if kind == "conv" else config.fc_bits


def compress(
    weight: Weight, plan: TensorPlan | None, config: CompressionConfig
) -> tuple[Raw | Quantized, float]:
    """The tensor to write and its relative RMS error (0.0 when stored exactly).

    With a plan: pruned as planned, then k-means weight sharing; stored as sparse codes,
    dense codes or exactly, whichever is smallest in the file.
    Raises ConvertError for NaN or infinite values, which weight sharing cannot represent.
    """
    exact = Raw(weight.array, dtype=weight.dtype, zstd_level=RAW_ZSTD_LEVEL)
    if plan is None:
        return exact, 0.0
    original = float_values(weight.array, weight.dtype)
    if not np.isfinite(original).all():
        raise ConvertError(
            f"tensor {weight.name!r} holds NaN or infinite values; exclude it from compression"
        )
    try:
        values = prune_array(original, plan) if plan.prunes else original
        shared = share_weights(
            values, plan.bits, init=plan.init, max_iter=config.kmeans_iters, seed=config.seed
        )
    except ValueError as exc:
        raise ConvertError(f"tensor {weight.name!r}: {exc}") from None
    shape = weight.array.shape
    coded = [Quantized(shared.codebook, shared.codes, shape, dtype=weight.dtype)]
    if shared.zero_symbol:
        flat = shared.codes.reshape(-1)
        positions = np.flatnonzero(flat)
        coded.append(Quantized(shared.codebook, flat[positions], shape, positions, dtype=weight.dtype))
    if len(coded) == 1 and _coded_bound(coded[0], plan.bits) < weight.array.nbytes:
        best = 0  # plainly smaller than the exact bytes: no need to encode it to know
    else:
        sizes = [stored_size(c) for c in coded]
        best = int(np.argmin(sizes))
        if weight.array.nbytes <= sizes[best]:  # exact storage costs no more (before zstd)
            return exact, 0.0
    decoded = float_values(dtypes.convert_floats(shared.codebook, weight.dtype), weight.dtype)[shared.codes]
    norm = float(np.linalg.norm(original))
    return coded[best], float(np.linalg.norm(original - decoded)) / norm if norm else 0.0


def _coded_bound(tensor: Quantized, bits: int) -> int:
    """About the most bytes dense codes take: a Huffman stream is no longer than fixed
    ``bits``-bit codes; plus the codebook, the code table, chunk offsets (a varint per
    4096 codes) and the rest of the header record."""
    numel = tensor.codes.size
    return -(-numel * bits // 8) + tensor.codebook.nbytes + tensor.codebook.size + 10 * (numel // 4096) + 256
