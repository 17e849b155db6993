"""THE data-free path of one tensor: plan, prune, share weights, then the cheapest encoding.

Every conversion (the CLI, ``convert``, ``save_module``, ``compress_state_dict``) and the end
of retraining (``compress_model``) pass each tensor through here, one at a time, so the
memory a conversion takes is a few bytes per element of the largest tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np

try:
    from numpy._core.multiarray import _set_madvise_hugepage
except ImportError:  # numpy 1.x
    try:
        from numpy.core.multiarray import _set_madvise_hugepage
    except ImportError:
        _set_madvise_hugepage = None

from dcformat import EncodedTensor, Narrow, dtypes
from dcformat import dcnn_pb2 as pb
from dcformat.codec.huffman import frequencies

from ..errors import ConvertError
from ..weight import UNTOUCHED_ROLES, Weight, float_values
from . import fidelity, share
from .assign import every_value, native
from .choose import RAW_ZSTD_LEVEL, cheapest, coded, exact
from .config import CompressionConfig, TensorPlan
from .fidelity import allocate, role_of
from .report import TensorReport, stage_bytes
from .share import SharedTensor, share_weights

FLOAT16_NORMAL = 2.0**-14  # the least normal float16 magnitude
FLOAT16_MAX = 65504.0

try:
    from . import _kmeans as _kernels
except ImportError:  # built without a compiler: numpy does the work
    _kernels = None


@dataclass(frozen=True)
class CompressedTensor:
    """A tensor ready for ``Writer.add_encoded``, its relative RMS error against the weight
    given (0.0 when stored exactly) and its report row; coded tensors keep the values of their
    codebook (as the file decodes them) and their flat codes."""

    encoded: EncodedTensor
    error: float
    report: TensorReport
    codebook: np.ndarray | None = None
    codes: np.ndarray | None = None
    scales: np.ndarray | None = None  # float32, one per row (axis 0)
    outliers: Outliers | None = None
    narrowed: bool = False  # stored as float16 (RAW_NARROW)

    @property
    def lossless(self) -> bool:
        """Whether the file holds the tensor exactly."""
        return self.codes is None and not self.narrowed

    def values(self, weight: Weight) -> np.ndarray:
        """The float values the file decodes to, in the weight's shape (``weight`` is the
        tensor this was compressed from)."""
        if self.narrowed:
            return Narrow(weight.array).values()
        if self.codes is None:
            return weight.values()
        return self.decoded(0, self.codes.size).reshape(weight.array.shape)

    def decoded(self, first: int, stop: int) -> np.ndarray:
        """Flat decoded values ``first:stop`` of a coded tensor."""
        return _decode(self.codebook, self.codes, self.scales, first, stop, self.outliers)


# exact elements written over the decoded codes: flat positions (int64, increasing) and
# their values as the file decodes them (the codebook's dtype)
Outliers = tuple[np.ndarray, np.ndarray]


def _decode(
    codebook: np.ndarray,
    codes: np.ndarray,
    scales: np.ndarray | None,
    first: int,
    stop: int,
    outliers: Outliers | None = None,
) -> np.ndarray:
    """Flat decoded values ``first:stop``: codebook values, times their row's scale, with the
    outliers written over them."""
    values = codebook[codes[first:stop]]
    if scales is not None:
        rows = np.arange(first, stop) // (codes.size // scales.size)
        values = (values * scales[rows]).astype(values.dtype, copy=False)
    if outliers is not None:
        at, exact = outliers
        low, high = np.searchsorted(at, [first, stop])
        values[at[low:high] - first] = exact[low:high]
    return values


def row_scales(values: np.ndarray, rows: int, exact: np.ndarray | None = None) -> np.ndarray | None:
    """Per-row float16 scales (each row's largest |w|, the ``exact`` positions left out) of
    flat float values, or None where float16 cannot hold them (a row of zeros gets 1)."""
    magnitudes = np.abs(values.reshape(rows, -1))
    if exact is not None:
        magnitudes.reshape(-1)[exact] = 0
    with np.errstate(over="ignore"):
        scales = magnitudes.max(axis=1).astype(np.float16)
    if not np.isfinite(scales).all():
        return None
    scales[scales == 0] = 1
    return scales


def plan_for(config: CompressionConfig, weight: Weight) -> TensorPlan | None:
    """The config's plan for a tensor; a conv/fc ``layer`` the model states beats the shape's."""
    # bfloat16 has no numpy dtype; any float dtype gives the same plan.
    like = np.float32 if weight.dtype == "bfloat16" else weight.array.dtype
    role = weight.role or role_of(weight.name, weight.array.shape, weight.dtype)
    try:
        plan = config.plan(weight.name, weight.array.shape, like, role)
    except ValueError as exc:
        raise ConvertError(str(exc), rule="usage") from None
    if plan is None or weight.layer is None or weight.layer == plan.layer:
        return plan
    if any(rule.bits is not None for rule in config.rules if rule.matches(weight.name)):
        return replace(plan, layer=weight.layer)
    bits = config.conv_bits if weight.layer == "conv" else config.fc_bits
    return replace(plan, layer=weight.layer, bits=bits)


def compress_weight(
    weight: Weight,
    config: CompressionConfig,
    importance: np.ndarray | None = None,
    floor: float | None = None,
) -> CompressedTensor:
    """Compress one tensor as ``config`` plans it (data-free), or store it exactly.

    With a plan: pruned as planned, then weight sharing: with the chooser (``config.snr``)
    the fewest bytes whose fidelity meets ``floor`` dB (default: the config's; see
    :func:`floors`), else k-means at the planned bits (each weight's error weighed by
    ``importance`` when calibration measured it); stored as sparse codes, dense codes or
    exactly, whichever is smallest in the file. A source that is already encoded
    (``weight.encodings``) keeps the cheapest of its exact encodings.
    Raises ConvertError for NaN or infinite values, which weight sharing cannot represent.
    """
    if weight.encodings:
        return _stored_as_is(weight, cheapest(weight.name, weight.encodings))
    plan = plan_for(config, weight)
    if plan is not None and plan.snr is not None and floor is not None:
        plan = replace(plan, snr=floor)
    return compress_planned(weight, plan, config, importance)


def floors(weights: Iterable[Weight], config: CompressionConfig) -> dict[str, float]:
    """The chooser's floor of each tensor it codes: ``config.snr`` allocated by size over the
    model (:func:`~converters.compress.fidelity.allocate`); empty without the chooser. The
    weights' arrays are not read: shape-only stand-ins (:meth:`Weight.outline`) will do."""
    if config.snr is None:
        return {}
    sizes = {}
    for weight in weights:
        plan = plan_for(config, weight)
        if plan is not None and plan.snr is not None:
            sizes[weight.name] = weight.array.size
    return allocate(config.snr, sizes, config.snr_spread)


def compress_planned(
    weight: Weight,
    plan: TensorPlan | None,
    config: CompressionConfig,
    importance: np.ndarray | None = None,
    scaled: bool = False,
    *,
    outliers: float = 0.0,
    values: np.ndarray | None = None,
    clustered: np.ndarray | None = None,
) -> CompressedTensor:
    """Compress one tensor by ``plan`` (None: store it exactly); see :func:`compress_weight`.

    ``scaled`` (float32 tensors): every row (axis 0) is divided by a float16 scale, its
    largest |w|, before weight sharing, and the file stores the scales (format 1.1): one
    codebook then serves rows of very different ranges. ``outliers``: that fraction of the
    largest |w| is stored exactly over the codes (format 1.1) and left out of the clustering
    and of the row scales. ``values`` (the weight's flat float values) and ``clustered``
    (:func:`share.kmeans_input` of them, or of the values shared when outliers are left
    out) save computing them again when the caller has them.
    """
    if plan is None:
        return _kept(weight, config)
    with small_pages():
        if plan.snr is not None and not plan.prunes and importance is None:
            return _chosen(weight, plan, config)
        return _shared(weight, plan, config, importance, scaled, outliers, values, clustered)


@contextmanager
def small_pages() -> Iterator[None]:
    """numpy's large arrays without its request for transparent huge pages (``madvise``), then
    the setting as it was. Where the kernel compacts memory to serve that request (THP defrag
    "madvise", the common default), every fresh array of a tensor's size costs more system
    time than its huge pages save the conversion, whose arrays are streamed once or twice."""
    if _set_madvise_hugepage is None:
        yield
        return
    was = _set_madvise_hugepage(False)
    try:
        yield
    finally:
        _set_madvise_hugepage(was)


def _shared(
    weight: Weight,
    plan: TensorPlan,
    config: CompressionConfig,
    importance: np.ndarray | None,
    scaled: bool,
    outliers: float,
    values: np.ndarray | None,
    clustered: np.ndarray | None,
) -> CompressedTensor:
    """:func:`compress_planned` of a plan that needs no chooser."""
    original = values = weight.values().reshape(-1) if values is None else values
    if not all_finite(values):
        raise ConvertError(
            f"tensor {weight.name!r} holds NaN or infinite values; exclude it from compression"
        )
    exact = outlier_positions(values, outliers) if outliers else None
    scales = None
    if scaled and weight.dtype == "float32" and weight.array.ndim >= 2 and weight.array.size:
        scales = row_scales(values, weight.array.shape[0], exact)
    plain = scales is None and not plan.prunes and exact is None
    if clustered is None and importance is None and plain and _widened(weight):
        clustered = share.kmeans_input(sorted_values(weight, values))  # what share_weights would sort
    try:
        if plan.prunes:
            from .prune import prune_array  # imports torch, which pruning alone needs

            values = prune_array(values, plan)
        if scales is not None:
            rows = scales.astype(np.float32)[:, None]
            values = (values.reshape(rows.shape[0], -1) / rows).reshape(-1)
            if importance is not None:
                importance = (np.asarray(importance).reshape(rows.shape[0], -1) * rows**2).reshape(-1)
        if exact is not None and importance is not None:  # the outliers weigh nothing
            importance = np.array(importance, dtype=np.float32).reshape(-1)
            importance[exact] = 0
        if not plain:  # a sample of the values as shared: the caller's is of the weight's values
            clustered = share.kmeans_input(_fit_sample(values, exact))
        shared = share_weights(
            values,
            plan.bits,
            init=plan.init,
            max_iter=config.kmeans_iters,
            seed=config.seed,
            importance=importance,
            clustered=clustered,
            stored=weight.array if _widened(weight) and plain else None,
        )
    except ValueError as exc:
        raise ConvertError(f"tensor {weight.name!r}: {exc}") from None
    if exact is not None:
        shared = _with_outlier_codes(shared, exact)
    return encode_shared(weight, shared, plan.bits, original, scales, exact)


def outlier_positions(values: np.ndarray, fraction: float) -> np.ndarray | None:
    """The flat positions (increasing, int64) of the ``fraction`` of largest |values| (at least
    one; ties at the threshold left out past that count), or None where that would be over
    half of them. Memory: one copy of the magnitudes, then blocks."""
    count = max(1, round(fraction * values.size))
    if 2 * count > values.size:
        return None
    magnitudes = np.abs(values)
    magnitudes.partition(values.size - count)
    threshold = magnitudes[values.size - count]
    del magnitudes
    block = share.BLOCK
    found = np.concatenate(
        [
            np.flatnonzero(np.abs(values[first : first + block]) >= threshold) + first
            for first in range(0, values.size, block)
        ]
    ).astype(np.int64)
    ties = found[np.abs(values[found]) == threshold]
    excess = found.size - count
    if excess > 0:  # the last ties go back to the codes
        found = np.setdiff1d(found, ties[ties.size - excess :], assume_unique=True)
    return found


def _fit_sample(values: np.ndarray, exact: np.ndarray | None) -> np.ndarray:
    """The values k-means fits, sorted: all but the ``exact`` positions; for tensors over
    ``share.KMEANS_SAMPLE`` values an even stride of them (a sample of about that many)."""
    stride = -(-values.size // share.KMEANS_SAMPLE)
    picked = np.arange(0, values.size, stride)
    if exact is not None:
        picked = picked[~np.isin(picked, exact, assume_unique=True)]
    return np.sort(values[picked] if stride > 1 or exact is not None else values)


def _with_outlier_codes(shared: SharedTensor, exact: np.ndarray) -> SharedTensor:
    """The outlier positions (which the file overwrites) given the most frequent code, which
    costs the fewest Huffman bits."""
    codes = shared.codes
    codes[exact] = np.argmax(frequencies(codes, shared.codebook.size))
    return SharedTensor(shared.codebook, codes, shared.zero_symbol)


def sorted_values(weight: Weight, values: np.ndarray) -> np.ndarray:
    """``np.sort`` of the weight's flat finite float ``values``. For 16-bit floats (bfloat16,
    float16) a counting sort of their 65536 bit patterns, several times faster: the same
    array but for where -0.0 and +0.0 fall among the zeros, which np.sort leaves open too
    (they compare equal, so every later comparison and sum treats them alike)."""
    if not _widened(weight) or values.size < 1 << 16:
        return np.sort(values)
    stored = weight.array.reshape(-1)
    counts = frequencies(stored.view(np.uint16), 1 << 16)
    every = every_value(stored.dtype)
    present = np.flatnonzero(counts)
    order = present[np.argsort(every[present], kind="stable")]
    return np.repeat(every[order], counts[order])


def all_finite(values: np.ndarray) -> bool:
    """Whether float ``values`` hold no NaN or infinity: their least and largest are finite
    (NaN propagates through both), two passes without an array of the values' size."""
    return values.size == 0 or bool(np.isfinite(np.min(values)) and np.isfinite(np.max(values)))


def _widened(weight: Weight) -> bool:
    """Whether the weight's float values are its 16-bit stored values widened (bfloat16, float16)."""
    return weight.dtype in ("bfloat16", "float16") and weight.array.itemsize == 2


def _chosen(weight: Weight, plan: TensorPlan, config: CompressionConfig) -> CompressedTensor:
    """The error-bounded chooser's coding: the plain setting :func:`fidelity.choices` estimates
    cheapest on a sample, coded on the full tensor, measured, and given more bits while it
    misses the floor. Where a form with row scales or outliers (``config.extras``, uniform
    grids) is estimated cheaper at the fidelity the plain setting reached on the sample (the
    floor, where no plain setting meets it), it is coded too, held to the fidelity the plain
    coding measured, and taken if its file is smaller. Or exact storage."""
    values = weight.values().reshape(-1)
    if not all_finite(values):
        raise ConvertError(
            f"tensor {weight.name!r} holds NaN or infinite values; exclude it from compression"
        )
    floor = plan.snr
    ordered = sorted_values(weight, values)  # for the search's sample and the k-means sample alike

    def search(
        ordered: np.ndarray, snr_db: float, forms: tuple[fidelity.Form, ...], lloyd: bool = True
    ) -> fidelity.Choice:
        return fidelity.choices(
            values.reshape(weight.array.shape),
            snr_db=snr_db,
            seed=config.seed,
            ordered=ordered,
            forms=forms,
            value_bytes=weight.array.itemsize,
            lloyd=lloyd,
        )[0]

    plain = search(ordered, floor, (fidelity.PLAIN,))
    extras = chooser_forms(config, weight)[1:]
    extra = None
    target = max(floor, plain.sample_db) if plain.bits else floor
    if extras and np.isfinite(target) and np.any(ordered):  # inf: nothing codes closer
        extra = search(ordered, target, extras, lloyd=False)
    clustered = share.kmeans_input(ordered)  # what the k-means sorts (a sample of large tensors)
    del ordered  # extras make their own samples: a copy at a time
    best: tuple[CompressedTensor, float] | None = None
    if plain.bits is not None:
        best = _within_floor(weight, plan, config, plain, values, clustered, floor)
    del clustered
    if extra is not None and extra.bits is not None:
        coded = best is not None and best[0].codes is not None
        if not coded or extra.bits_per_weight * values.size / 8 < best[0].encoded.stored_bytes:
            other = _within_floor(weight, plan, config, extra, values, None, best[1] if coded else floor)
            if other is not None and (
                best is None or other[0].encoded.stored_bytes < best[0].encoded.stored_bytes
            ):
                best = other
    if best is None:
        return compress_planned(weight, None, config)
    return best[0]


def chooser_forms(config: CompressionConfig, weight: Weight) -> tuple[fidelity.Form, ...]:
    """The forms the chooser tries for a weight: plain, and those of ``config.extras`` the file
    can store for it (row scales: float32 tensors)."""
    scales = "scales" in config.extras and weight.dtype == "float32"
    outliers = "outliers" in config.extras
    extra = [f for f in fidelity.EXTRA_FORMS if (scales or not f.scaled) and (outliers or not f.outliers)]
    return (fidelity.PLAIN, *extra)


def _within_floor(
    weight: Weight,
    plan: TensorPlan,
    config: CompressionConfig,
    choice: fidelity.Choice,
    values: np.ndarray,
    clustered: np.ndarray | None,
    floor: float,
) -> tuple[CompressedTensor, float] | None:
    """The full tensor coded as ``choice`` says, with bits added while its measured fidelity
    misses ``floor``, and that fidelity (exact storage, inf, where that was smaller); None if
    nothing up to ``fidelity.MAX_BITS`` meets it."""
    iterated = replace(config, kmeans_iters=choice.iters or config.kmeans_iters)
    for bits in range(choice.bits, fidelity.MAX_BITS + 1):
        setting = replace(plan, bits=bits, init=choice.init or plan.init, snr=None)
        tensor = compress_planned(
            weight,
            setting,
            iterated,
            scaled=choice.form.scaled,
            outliers=choice.form.outliers,
            values=values,
            clustered=clustered,
        )
        if tensor.codes is None:  # exact storage was smaller
            return tensor, float("inf")
        measured = fidelity.fidelity_db(values.reshape(weight.array.shape), _decoder(tensor))
        if measured >= floor:
            return tensor, measured
    return None


def _decoder(tensor: CompressedTensor) -> Callable[[int, int], np.ndarray]:
    """``decoded(first, stop)`` of a coded tensor, float64 as fidelity_db takes it."""
    if tensor.scales is not None or tensor.outliers is not None:
        return tensor.decoded
    wide = tensor.codebook.astype(np.float64)  # one gather
    return lambda first, stop: np.take(wide, tensor.codes[first:stop])


def encode_shared(
    weight: Weight,
    shared: SharedTensor,
    bits: int,
    values: np.ndarray | None = None,
    scales: np.ndarray | None = None,
    outliers: np.ndarray | None = None,
) -> CompressedTensor:
    """The cheapest of the shared tensor's codes, or the weight stored exactly where its
    plain bytes cost no more than the codes.

    ``values`` are the weight's float values, flat, when the caller has them already;
    ``scales`` the float16 row scales the codes were shared under; ``outliers`` the flat
    positions whose stored values the file keeps exactly over the codes.
    """
    shared = shared.compact()
    shape = tuple(weight.array.shape)
    stored_outliers = None
    if outliers is not None:
        stored_outliers = (outliers, weight.array.reshape(-1)[outliers])
    encoded = cheapest(weight.name, coded(shared, shape, weight.dtype, scales, stored_outliers))
    stored_bytes = encoded.stored_bytes  # packs the record's codebook and tables: once
    if weight.array.nbytes <= stored_bytes:
        return _stored_as_is(weight, cheapest(weight.name, [exact(weight.array, weight.dtype)]))
    if scales is None:
        codebook = float_values(dtypes.convert_floats(shared.codebook, weight.dtype), weight.dtype)
        row_scale = None
    else:  # float32 tensors only: codebook value times scale, in float32, as the reader does
        codebook, row_scale = shared.codebook.astype(np.float32), scales.astype(np.float32)
    values = weight.values().reshape(-1) if values is None else values
    kept = None if outliers is None else (outliers, values[outliers].astype(codebook.dtype))
    error = _relative_rms(values, codebook, shared.codes, row_scale, kept)
    survivors = shared.codes != 0 if shared.zero_symbol else None  # a report stage's sparse layout
    row = _row(
        weight,
        encoded,
        bits=bits,
        pruned_bytes=stage_bytes(survivors, values.size, 8 * weight.array.itemsize),
        quantized_bytes=stage_bytes(survivors, values.size, bits) + 4 * len(shared.codebook),
        error=error,
        stored_bytes=stored_bytes,
    )
    return CompressedTensor(encoded, error, row, codebook, shared.codes, row_scale, kept)


def _kept(weight: Weight, config: CompressionConfig) -> CompressedTensor:
    """A tensor without a coding: stored exactly, or as float16 where :func:`narrowable`."""
    stored = exact(weight.array, weight.dtype)
    if not narrowable(weight, config):
        return _stored_as_is(weight, cheapest(weight.name, [stored]))
    narrow = Narrow(weight.array, "float16", zstd_level=RAW_ZSTD_LEVEL)
    encoded = cheapest(weight.name, [narrow, stored])
    if encoded.record.encoding != pb.RAW_NARROW:
        return _stored_as_is(weight, encoded)
    error = total = 0.0  # ‖values − float16 values‖ and ‖values‖ squared, a block at a time
    flat = weight.array.reshape(-1)
    for first in range(0, flat.size, share.BLOCK):
        block = flat[first : first + share.BLOCK].astype(np.float64)
        diff = block - block.astype(np.float16)
        error += float(np.dot(diff, diff))
        total += float(np.dot(block, block))
    error = (error / total) ** 0.5 if total else 0.0
    original = weight.array.nbytes
    row = _row(weight, encoded, bits=16, pruned_bytes=original, quantized_bytes=original, error=error)
    return CompressedTensor(encoded, error, row, narrowed=True)


def narrowable(weight: Weight, config: CompressionConfig) -> bool:
    """Whether a tensor kept without a coding may be stored as float16 (``config.extras``
    "float16", with the chooser): a float32 or float64 tensor, not a quantization scale, zero
    point or a quantized operator's bias (``UNTOUCHED_ROLES``), whose every element is zero or
    a normal float16 in magnitude (2^-14 .. 65504), so that each keeps 11 significant bits."""
    if config.snr is None or "float16" not in config.extras or weight.dtype not in ("float32", "float64"):
        return False
    if (weight.role or role_of(weight.name, weight.array.shape, weight.dtype)) in UNTOUCHED_ROLES:
        return False
    flat = weight.array.reshape(-1)
    for first in range(0, flat.size, share.BLOCK):  # a block's magnitudes at a time
        magnitudes = np.abs(flat[first : first + share.BLOCK])
        nonzero = magnitudes[magnitudes != 0]
        if nonzero.size and not (
            all_finite(nonzero) and nonzero.min() >= FLOAT16_NORMAL and nonzero.max() <= FLOAT16_MAX
        ):
            return False
    return flat.size > 0


def _stored_as_is(weight: Weight, encoded: EncodedTensor) -> CompressedTensor:
    original = weight.array.nbytes
    row = _row(weight, encoded, bits=None, pruned_bytes=original, quantized_bytes=original, error=0.0)
    return CompressedTensor(encoded, 0.0, row)


def _row(
    weight: Weight,
    encoded: EncodedTensor,
    *,
    bits: int | None,
    pruned_bytes: int,
    quantized_bytes: int,
    error: float,
    stored_bytes: int | None = None,
) -> TensorReport:
    return TensorReport(
        name=weight.name,
        shape=tuple(weight.array.shape),
        dtype=weight.dtype,
        encoding=pb.Encoding.Name(encoded.record.encoding),
        nonzeros=encoded.record.nonzeros,
        weight_bits=bits,
        index_bits=encoded.record.index_bits or None,
        original_bytes=weight.array.nbytes,
        pruned_bytes=pruned_bytes,
        quantized_bytes=quantized_bytes,
        stored_bytes=encoded.stored_bytes if stored_bytes is None else stored_bytes,
        error=error,
    )


def _relative_rms(
    values: np.ndarray,
    codebook: np.ndarray,
    codes: np.ndarray,
    scales: np.ndarray | None = None,
    outliers: Outliers | None = None,
) -> float:
    """‖values − decoded‖ / ‖values‖, in blocks (float64 sums)."""
    error = total = 0.0
    block = share.BLOCK
    sums = _native_sums(values, codebook, codes, scales)
    for first in range(0, values.size, block):
        stop = min(values.size, first + block)
        if sums is not None:  # the same sums in C (_kmeans.c), without the blocks' work arrays
            block_error, block_total = sums(first, stop)
        else:
            v = values[first:stop].astype(np.float64)
            diff = v - _decode(codebook, codes, scales, first, stop)
            block_error = float(np.sum(np.square(diff, out=diff)))
            block_total = float(np.sum(np.square(v, out=v)))
        error += block_error
        total += block_total
    if outliers is not None:  # the codes' errors there give way to the exact values'
        positions, exact = outliers
        wanted = values[positions].astype(np.float64)
        error += float(np.sum((wanted - exact) ** 2))
        coded = codebook[codes[positions]]
        if scales is not None:  # in the codebook's precision, as _decode and the reader
            coded = (coded * scales[positions // (codes.size // scales.size)]).astype(coded.dtype)
        error -= float(np.sum((wanted - coded.astype(np.float64)) ** 2))
        error = max(error, 0.0)
    return (error / total) ** 0.5 if total else 0.0


def _native_sums(
    values: np.ndarray, codebook: np.ndarray, codes: np.ndarray, scales: np.ndarray | None
) -> Callable[[int, int], tuple[float, float]] | None:
    """``sums(first, stop)``: the squared errors and squared values of a block, as
    :func:`_relative_rms` sums them, by the C kernel; None where numpy must do it."""
    if _kernels is None or not native() or codes.dtype not in (np.uint8, np.uint16):
        return None
    if values.dtype not in (np.float32, np.float64) or codebook.dtype != values.dtype:
        return None
    if scales is not None and (values.dtype != np.float32 or scales.dtype != np.float32):
        return None
    table = np.zeros(1 << (8 * codes.itemsize), dtype=values.dtype)  # an entry for every code
    table[: codebook.size] = codebook
    flat, code_values = np.ascontiguousarray(values).reshape(-1), np.ascontiguousarray(codes).reshape(-1)
    row_scales = None if scales is None else np.ascontiguousarray(scales)
    width = 1 if scales is None else codes.size // scales.size

    def sums(first: int, stop: int) -> tuple[float, float]:
        return _kernels.sq_sums(
            flat, flat.itemsize, table, code_values, code_values.itemsize, row_scales, width, first, stop
        )

    return sums
