"""Data-free compression of one tensor: the pipeline's pruning and weight sharing, then the
smallest of the encodings .dcnn offers.

Tensors come one at a time, and a large tensor is clustered from a fixed-size sample of
its weights, so the memory a conversion takes is a few bytes per element of the largest
tensor (see :func:`share`), whatever the model's size.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from dcformat import Quantized, Raw, dtypes

from .arrays import float_values
from .assign import assign
from .errors import ConvertError
from .model_io import Kind, Weight
from .pipeline.config import CompressionConfig, TensorPlan
from .pipeline.encode import cheapest
from .pipeline.quantize import SharedTensor, share_weights

RAW_ZSTD_LEVEL = 3  # tensors stored exactly are zstd-compressed when that saves space
KMEANS_SAMPLE = 1 << 22  # larger tensors are clustered from this many evenly ranked weights
BLOCK = 1 << 20  # weights coded and measured at a time


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
    flat = weight.array.reshape(-1)
    if not all(np.isfinite(float_values(block, weight.dtype)).all() for block in _blocks(flat)):
        raise ConvertError(
            f"tensor {weight.name!r} holds NaN or infinite values; exclude it from compression"
        )
    try:
        if plan.prunes:
            from .pipeline.prune import prune_array  # imports torch, which pruning alone needs

            pruned = prune_array(float_values(flat, weight.dtype), plan)
            shared = share(pruned, dtypes.name_of(pruned.dtype), plan, config)
        else:
            shared = share(flat, weight.dtype, plan, config)
    except ValueError as exc:
        raise ConvertError(f"tensor {weight.name!r}: {exc}") from None
    shape = weight.array.shape
    codes = shared.codes
    coded = [Quantized(shared.codebook, codes, shape, dtype=weight.dtype)]
    if shared.zero_symbol and 2 * np.count_nonzero(codes) <= codes.size:
        # Sparse codes can win only when zeros abound: with fewer, a zero symbol of about a
        # bit keeps dense codes smaller (measured at 30%, 50% and 60% zeros, 3 to 8 bits).
        positions = np.flatnonzero(codes)
        coded.append(Quantized(shared.codebook, codes[positions], shape, positions, dtype=weight.dtype))
    if len(coded) == 1 and _coded_bound(coded[0], plan.bits) < weight.array.nbytes:
        chosen = coded[0]  # plainly smaller than the exact bytes: no need to encode it to know
    else:
        chosen, size, _ = cheapest(weight.name, coded)
        if weight.array.nbytes <= size:  # exact storage costs no more (before zstd)
            return exact, 0.0
    codebook = float_values(dtypes.convert_floats(shared.codebook, weight.dtype), weight.dtype)
    error = total = 0.0
    for block, block_codes in zip(_blocks(flat), _blocks(codes), strict=True):
        values = float_values(block, weight.dtype).astype(np.float64)
        error += float(np.sum((values - codebook[block_codes]) ** 2))
        total += float(np.sum(values**2))
    return chosen, (error / total) ** 0.5 if total else 0.0


def share(flat: np.ndarray, dtype: str, plan: TensorPlan, config: CompressionConfig) -> SharedTensor:
    """The pipeline's weight sharing of a flat stored-form tensor (codes flat too), in memory
    bounded for tensors over KMEANS_SAMPLE weights.

    Those are clustered from about KMEANS_SAMPLE evenly spaced order statistics (the
    weights' distribution, at a fixed cost: the extremes among them, and a zero when the
    tensor has zeros, for the zero symbol); every weight then takes its nearest centroid, as
    k-means assigns them.
    """
    kmeans = {"init": plan.init, "max_iter": config.kmeans_iters, "seed": config.seed}
    if flat.size <= KMEANS_SAMPLE:
        return share_weights(float_values(flat, dtype), plan.bits, **kmeans)
    ordered = float_values(flat, dtype)
    if np.shares_memory(ordered, flat):  # float32 and float64 come as they are: sort a copy
        ordered = ordered.copy()
    ordered.sort()
    sample = [ordered[:: -(-flat.size // KMEANS_SAMPLE)], ordered[-1:]]  # evenly ranked, and the max
    zero = int(np.searchsorted(ordered, ordered.dtype.type(0)))  # a float64 0.0 would widen the array
    if zero < ordered.size and ordered[zero] == 0:
        sample.append(ordered[zero : zero + 1])
    sample = np.concatenate(sample)
    del ordered
    fitted = share_weights(sample, plan.bits, **kmeans)
    centroids = fitted.codebook[1:] if fitted.zero_symbol else fitted.codebook
    boundaries = (centroids[:-1].astype(np.float64) + centroids[1:]) / 2
    codes = np.empty(flat.size, dtype=np.uint8 if fitted.codebook.size <= 256 else np.uint16)
    for block, out in zip(_blocks(flat), _blocks(codes), strict=True):
        values = float_values(block, dtype)
        out[:] = assign(boundaries, values)
        if fitted.zero_symbol:  # code 0 is the exact zero, the centroids follow
            out += 1
            out[values == 0] = 0
    return SharedTensor(fitted.codebook, codes, fitted.zero_symbol)


def _blocks(array: np.ndarray) -> list[np.ndarray]:
    """Consecutive views of BLOCK elements of a flat array."""
    return [array[first : first + BLOCK] for first in range(0, array.size, BLOCK)]


def _coded_bound(tensor: Quantized, bits: int) -> int:
    """About the most bytes dense codes take: a Huffman stream is no longer than fixed
    ``bits``-bit codes; plus the codebook, the code table, chunk offsets (a varint per
    4096 codes) and the rest of the header record."""
    numel = tensor.codes.size
    return -(-numel * bits // 8) + tensor.codebook.nbytes + tensor.codebook.size + 10 * (numel // 4096) + 256
