"""The error-bounded default: per tensor, the weight sharing of fewest bytes that meets a
fidelity floor.

The floor is in dB, on :func:`fidelity_db`: the lower of the tensor's signal-to-quantization-
noise ratio, ``SQNR = 10 log10(sum w^2 / sum (w - q)^2)`` (``q`` the decoded values), and
the same ratio taken per output channel and averaged (so channels of small weights, which a
following BatchNorm or LayerNorm scales up, keep their share of the error budget).

For each tensor :func:`choices` codes a sample at 1, 2, ... bits (uniform grids, and k-means
from linear and density initialization) and takes the setting of least estimated size (code
entropy, what Huffman coding pays) that meets the floor; the converter then codes the full
tensor once, measures its fidelity, and adds bits while it misses the floor. The same search
prices the forms of format 1.1 (:class:`Form`: a float16 scale per row, the largest |w| kept
exact), which the converter takes only where the file is smaller at the fidelity the plain
coding reached (``converters.compress.tensor``). A tensor that nothing up to ``MAX_BITS``
codes within the floor, or codes smaller than its exact bytes, or whose role must stay exact
(biases, norms, scales, zero points, integer tensors), is stored exactly.

Roles come from the graph or module where it says so (``converters.formats``: the operator
input slot or the layer type that uses the tensor), else from the name and shape
(:func:`role_of`).

Pure numpy: nothing here imports torch or onnx.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .assign import assign, native
from .config import DEFAULT_SNR_DB, Init
from .share import SharedTensor, share_weights

try:
    from . import _kmeans as _kernels
except ImportError:  # built without a compiler: numpy does the work
    _kernels = None

MAX_BITS = 12  # codebooks of up to 4096 values (the uniform grid); exact storage beyond
LLOYD_MAX_BITS = 8  # k-means to convergence up to 256 centroids (the search sample has 65536 values)
SEARCH_SAMPLE = 1 << 16  # order statistics the bits search clusters
SEARCH_INITS: tuple[Init, ...] = ("linear", "density")
SEARCH_ITERS = 30  # k-means iterations in the search (the full tensor gets the config's)
SPREAD_DB = 10.0  # per-tensor floors lie within this of the model's floor (see allocate)
BLOCK_VALUES = 1 << 18  # values measured at a time (float64 work arrays of this size)
MIN_CHANNEL = 4  # fewer values per channel than this: the tensor is measured as one channel

# a name part that says "normalization": *norm* (LayerNorm, batchnorm, rmsnorm), bn1, ln_f
_NORM_PART = re.compile(r"norm|^(bn|ln)(\d+|_.*)?$")
FLOAT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64"})


@dataclass(frozen=True)
class Form:
    """How a tensor's values are prepared for weight sharing (format 1.1, spec 5.6 and 5.7):
    ``scaled``, every row (axis 0) divided by a float16 scale, its largest |w| among the
    values shared; ``outliers``, the fraction of largest |w| kept exact and left out of the
    clustering. The plain form has neither."""

    scaled: bool = False
    outliers: float = 0.0

    def describe(self) -> str:
        """A few words for reports: "plain", "row scales", "0.5% outliers", or both."""
        parts = (["row scales"] if self.scaled else []) + (
            [f"{100 * self.outliers:g}% outliers"] if self.outliers else []
        )
        return " + ".join(parts) or "plain"


PLAIN = Form()
# the forms the chooser tries besides plain; scales only where the file can store them
OUTLIER_FRACTIONS = (0.001,)
EXTRA_FORMS = (
    Form(scaled=True),
    *(Form(outliers=f) for f in OUTLIER_FRACTIONS),
    *(Form(scaled=True, outliers=f) for f in OUTLIER_FRACTIONS),
)


@dataclass(frozen=True)
class Choice:
    """A tensor's weight sharing: ``bits`` (codebook of up to 2**bits values), the centroid
    ``init`` and the number of k-means ``iters`` (1: a uniform grid with its centroids moved
    once to their cluster means), the ``form`` of the values shared; ``bits`` None when the
    tensor is stored exactly. ``snr_db`` is the floor it was chosen for, ``bits_per_weight``
    the estimated bytes per weight in bits (codes' entropy, codebook, scales and outliers),
    ``reason`` a few words on why; ``sample_db`` the fidelity it measured on the search's
    samples."""

    bits: int | None
    init: Init | None
    iters: int
    snr_db: float
    bits_per_weight: float
    reason: str
    form: Form = PLAIN
    sample_db: float = float("inf")


def role_of(name: str, shape: tuple[int, ...], dtype: str, graph_role: str | None = None) -> str:
    """A tensor's role: integer tensors are "int"; then the graph's word; then the name and shape.

    Names with a norm word are "norm", names ending in "bias" are "bias", rank-1 and scalar
    tensors are "bias" (per-channel vectors: biases, norm gains, scales), names with "embed"
    are "embedding"; everything else is a "weight".
    """
    if dtype not in FLOAT_DTYPES:
        return "int"
    if graph_role is not None:
        return graph_role  # type: ignore[return-value]
    lower = name.lower()
    leaf = lower.rpartition(".")[2]
    normed = any(_NORM_PART.search(part) for part in lower.split(".")[:-1])
    if normed and leaf in ("weight", "bias", "gamma", "beta", "scale"):
        return "norm"
    if leaf.endswith("bias") or len(shape) <= 1:
        return "bias"
    if "embed" in lower:
        return "embedding"
    return "weight"


def allocate(snr_db: float, sizes: Mapping[Any, int], spread_db: float = SPREAD_DB) -> dict[Any, float]:
    """Per-tensor floors that spend the model's noise budget where it saves the most bytes.

    With entropy-coded codes a tensor of ``n`` weights pays about ``n/2`` bits per halving
    of its relative noise, so if every tensor's relative noise reaches the output alike,
    the fewest bytes for a given total noise give each tensor noise in proportion to its
    size (reverse water-filling): floor_i = ``snr_db`` - 10 log10(n_i / mean n), kept within
    ``spread_db`` of ``snr_db``. The total relative noise stays about that of every tensor at
    ``snr_db``. ``spread_db`` 0 gives every tensor ``snr_db``.
    """
    if not sizes:
        return {}
    mean = sum(sizes.values()) / len(sizes)
    return {
        name: snr_db - float(np.clip(10 * np.log10(max(n, 1) / mean), -spread_db, spread_db))
        for name, n in sizes.items()
    }


def sqnr_db(values: np.ndarray, decoded: np.ndarray) -> float:
    """10 log10 of the signal's energy over the error's (inf when exact, -inf for a zero signal
    with an error)."""
    x = np.asarray(values, dtype=np.float64)
    noise = float(np.sum((x - np.asarray(decoded, dtype=np.float64)) ** 2))
    signal = float(np.sum(x**2))
    if noise == 0:
        return float("inf")
    return 10 * np.log10(signal / noise) if signal else float("-inf")


def channel_rows(values: np.ndarray) -> np.ndarray:
    """The tensor as (channels, rest): axis 0 after leading axes of size 1 (output channels of
    a conv or PyTorch linear weight, the rows of an embedding or ONNX MatMul weight); one
    channel for a vector or when axis 0 splits it into pieces under MIN_CHANNEL values."""
    a = np.asarray(values)
    shape = list(a.shape)
    while len(shape) > 1 and shape[0] == 1:
        shape.pop(0)
    if len(shape) < 2 or a.size < MIN_CHANNEL * shape[0]:
        return a.reshape(1, -1)  # a vector, or "channels" too small to be channels: one
    return a.reshape(shape[0], -1)


def fidelity_db(values: np.ndarray, decoded: np.ndarray | Callable[[int, int], np.ndarray]) -> float:
    """The floor's measure: the lower of the tensor's SQNR and its channel SQNR, the latter
    ``-10 log10(mean over channels of min(1, noise_c / signal_c))``: what reaches the output
    after a normalization (BatchNorm, LayerNorm) rescales every channel alike, so a channel of
    small weights keeps its share of the error budget.

    ``decoded`` is an array of the values' size, or ``decoded(first, stop)`` giving the flat
    decoded values of that range: channels are measured a block at a time (float64 sums), so
    the memory taken is a block's, not the tensor's.
    """
    x = channel_rows(np.asarray(values))
    rows, width = x.shape
    if callable(decoded):
        decode = decoded
    else:
        flat = np.asarray(decoded).reshape(-1)

        def decode(first: int, stop: int) -> np.ndarray:
            return flat[first:stop]

    signal, noise = np.empty(rows), np.empty(rows)
    step = max(1, BLOCK_VALUES // max(width, 1))
    for first in range(0, rows, step):
        stop = min(rows, first + step)
        xb = x[first:stop].astype(np.float64)
        qb = np.asarray(decode(first * width, stop * width), dtype=np.float64).reshape(xb.shape)
        signal[first:stop] = np.einsum("ij,ij->i", xb, xb)
        qb -= xb
        noise[first:stop] = np.einsum("ij,ij->i", qb, qb)
    relative = np.where(signal > 0, np.minimum(noise / np.where(signal > 0, signal, 1), 1.0), noise > 0)
    channel = float(relative.mean())
    channel_db = float("inf") if channel == 0 else -10 * float(np.log10(channel))
    total_noise, total_signal = float(noise.sum()), float(signal.sum())
    if total_noise == 0:
        tensor_db = float("inf")
    else:
        tensor_db = 10 * np.log10(total_signal / total_noise) if total_signal else float("-inf")
    return min(float(tensor_db), channel_db)


def row_sample(values: np.ndarray, size: int = SEARCH_SAMPLE) -> np.ndarray:
    """Evenly spaced whole channels of the tensor (see :func:`channel_rows`), about ``size``
    values in all (float64; part of one channel when a channel alone is larger)."""
    return np.asarray(_sampled_rows(channel_rows(values), size)[:, :size], dtype=np.float64)


def _sampled_rows(rows: np.ndarray, size: int) -> np.ndarray:
    """The whole rows :func:`row_sample` takes (of which it keeps the first ``size`` values)."""
    step = max(1, -(-rows.size // size))
    return rows[::step] if rows.shape[1] <= size else rows[: 1 + rows.shape[0] // step]


def error_to_db(relative_rms: float) -> float:
    """The SQNR of a relative RMS error (what :func:`converters.compress.compress` reports)."""
    return float("inf") if relative_rms == 0 else -20 * float(np.log10(relative_rms))


def search_sample(
    values: np.ndarray, size: int = SEARCH_SAMPLE, ordered: np.ndarray | None = None
) -> np.ndarray:
    """About ``size`` evenly ranked order statistics of ``values`` (float64), with the maximum,
    and a zero when the values have zeros (so the sample keeps the zero symbol). ``ordered``:
    ``np.sort`` of the flat values, when the caller has it (saves sorting again)."""
    flat = np.sort(np.asarray(values).ravel()) if ordered is None else ordered  # the values' precision
    if flat.size <= size:
        return flat.astype(np.float64)
    parts = [flat[:: -(-flat.size // size)].astype(np.float64), flat[-1:].astype(np.float64)]
    zero = int(np.searchsorted(flat, flat.dtype.type(0)))  # a Python 0 would widen the array
    if zero < flat.size and flat[zero] == 0:
        parts.append(np.zeros(1))
    return np.sort(np.concatenate(parts))


def choices(
    values: np.ndarray,
    *,
    snr_db: float = DEFAULT_SNR_DB,
    max_bits: int = MAX_BITS,
    lloyd_max_bits: int = LLOYD_MAX_BITS,
    seed: int = 0,
    ordered: np.ndarray | None = None,
    forms: tuple[Form, ...] = (PLAIN,),
    value_bytes: int = 4,
    lloyd: bool = True,
) -> list[Choice]:
    """For each of ``forms`` that applies, the weight sharing of a float tensor's ``values``
    that meets ``snr_db`` (:func:`fidelity_db` on search samples) in the fewest estimated
    bytes, cheapest first; one Choice with ``bits`` None when no form meets it up to
    ``max_bits``.

    Candidates: uniform grids over the range shared with one centroid update (``iters`` 1;
    entropy-coded, they need the fewest bytes for smooth distributions), tried from 1 bit up
    to the first that meets the floor (finer ones only cost more); and k-means run to
    convergence from linear and from density initialization (best for few bits and clustered
    values), from that many bits (at most ``lloyd_max_bits``) down while it still meets the
    floor. The size estimate is the codes' entropy (what Huffman coding pays, within a few
    percent), the codebook, and the form's extras: 2 bytes per row scale; per outlier its
    value (``value_bytes``) and its position (the entropy of a geometric gap).

    ``lloyd`` False tries the uniform grids only (a quicker search). Forms that do not apply
    are skipped: scales need rows (axis 0 of at least 2, each of
    at least ``MIN_CHANNEL`` values) that float16 can scale; outliers need at least
    ``1 / fraction`` values. ``ordered``, ``np.sort`` of the flat values, saves sorting them
    when the caller has it. Raises ValueError for an empty tensor or non-finite values.
    """
    values = np.asarray(values)
    ordered = np.sort(values.ravel()) if ordered is None else ordered
    sample = search_sample(values, ordered=ordered)
    if sample.size == 0:
        raise ValueError("cannot choose a setting for an empty tensor")
    if not np.isfinite(sample[[0, -1]]).all():
        raise ValueError("the tensor holds NaN or infinite values")
    if not np.any(sample):
        return [Choice(1, "linear", 1, float("inf"), 0.0, "all zeros")]
    numel = int(values.size)
    found: list[tuple[float, int, Init, int, float, Form]] = []
    best_snr = float("-inf")
    for form in forms:
        view = _view(values, ordered, form, value_bytes)
        if view is None:
            continue
        best, snr = _search(view, snr_db, max_bits, lloyd_max_bits if lloyd else 0, seed, numel)
        best_snr = max(best_snr, snr)
        if best is not None:
            found.append((*best, form))
    if not found:
        return [Choice(None, None, 0, float("inf"), 0.0, f"best {best_snr:.1f} dB < {snr_db:g} dB")]
    out = []
    for size, bits, init, iters, snr, form in sorted(found, key=lambda f: f[0]):
        how = "uniform grid" if iters == 1 else f"k-means from {init}"
        per_weight = 8 * size / numel
        reason = f"{how}, {bits} bits, {form.describe()}, ~{per_weight:.2f} bits/weight"
        out.append(Choice(bits, init, iters, snr_db, per_weight, reason, form, snr))
    return out


@dataclass(frozen=True)
class _View:
    """A form's search material: the sorted values it clusters (``fit``), whole sampled rows
    in the tensor's units (``rows``), how a clustering decodes them (``decode``), and the
    bytes the form adds (scales, outliers)."""

    fit: np.ndarray
    rows: np.ndarray
    decode: Callable[[SharedTensor], np.ndarray]
    extra_bytes: float
    plain: bool


def _view(values: np.ndarray, ordered: np.ndarray, form: Form, value_bytes: int) -> _View | None:
    """The search material of ``form`` (see :class:`_View`), or None where it does not apply."""
    numel = values.size
    threshold = float("inf")
    extra = 0.0
    if form.outliers:
        count = round(form.outliers * numel)
        if count < 1 or 2 * count > numel:
            return None
        ends = np.abs(np.concatenate((ordered[:count], ordered[-count:])).astype(np.float64))
        threshold = float(np.partition(ends, ends.size - count)[ends.size - count])  # count-th largest
        if threshold == 0:
            return None
        first = np.searchsorted(ordered, ordered.dtype.type(-threshold), side="right")
        stop = np.searchsorted(ordered, ordered.dtype.type(threshold), side="left")
        inliers = ordered[first:stop]
        kept = numel - inliers.size
        extra += kept * (value_bytes + np.log2(np.e * numel / kept) / 8)
    else:
        inliers = ordered
    if not form.scaled:
        rows = row_sample(values)
        exact = np.abs(rows) >= threshold

        def decode(shared: SharedTensor) -> np.ndarray:
            decoded = _assign(shared, rows)
            decoded[exact] = rows[exact]
            return decoded

        return _View(search_sample(values, ordered=inliers), rows, decode, extra, not form.outliers)
    if values.ndim < 2 or values.shape[0] < 2 or channel_rows(values).shape[0] != values.shape[0]:
        return None
    whole = np.abs(_sampled_rows(values.reshape(values.shape[0], -1), SEARCH_SAMPLE).astype(np.float64))
    with np.errstate(over="ignore"):  # each row's scale is its largest |w| left to share
        scales = np.where(whole < threshold, whole, 0).max(axis=1).astype(np.float16)
    if not np.isfinite(scales).all():
        return None
    scales = np.where(scales == 0, 1, scales).astype(np.float64)[:, None]
    rows = row_sample(values)  # those rows (the first SEARCH_SAMPLE values of very wide ones)
    exact = np.abs(rows) >= threshold
    scaled = rows / scales
    fit = np.sort(scaled[~exact])

    def decode_scaled(shared: SharedTensor) -> np.ndarray:
        decoded = _assign(shared, scaled) * scales
        decoded[exact] = rows[exact]
        return decoded

    return _View(search_sample(fit, ordered=fit), rows, decode_scaled, extra + 2 * values.shape[0], False)


def _search(
    view: _View, snr_db: float, max_bits: int, lloyd_max_bits: int, seed: int, numel: int
) -> tuple[tuple[float, int, Init, int, float] | None, float]:
    """The cheapest (estimated bytes, bits, init, iters, fidelity) of a form that meets the
    floor (None if none does), and the best fidelity seen."""
    sample = view.fit
    best_snr = float("-inf")
    met: list[tuple[float, int, Init, int, float]] = []
    if sample.size == 0 or not np.any(sample):
        return None, best_snr

    def meets(bits: int, init: Init, iters: int) -> bool:
        nonlocal best_snr
        shared = share_weights(sample, bits, init=init, max_iter=iters, seed=seed)
        snr = fidelity_db(view.rows, view.decode(shared))
        if view.plain:  # the ranked sample holds the extremes the sampled rows may miss
            snr = min(snr, _shared_sqnr_db(sample, shared))
        best_snr = max(best_snr, snr)
        if snr >= snr_db:
            size = numel * _entropy(shared.codes) / 8 + 4 * shared.codebook.size + view.extra_bytes
            met.append((size, bits, init, iters, snr))
        return snr >= snr_db

    # uniform grids: the fewest bits that meet the floor (finer ones cost more), searched from
    # an estimate; then k-means from that many bits (at most lloyd_max_bits) down, while it
    # still meets the floor
    uniform = start = _uniform_start(sample, snr_db, max_bits)
    if meets(start, "linear", 1):
        while uniform > 1 and meets(uniform - 1, "linear", 1):
            uniform -= 1
    else:
        uniform = next((b for b in range(start + 1, max_bits + 1) if meets(b, "linear", 1)), max_bits)
    for bits in range(min(uniform, lloyd_max_bits), 0, -1):
        if not [init for init in SEARCH_INITS if meets(bits, init, SEARCH_ITERS)]:
            break
    return (min(met) if met else None), best_snr


def _uniform_start(sample: np.ndarray, snr_db: float, max_bits: int) -> int:
    """Two bits below what a uniform grid over the sample's range needs for ``snr_db`` if its
    noise were step^2 / 12 (a search start that saves trying every smaller width)."""
    rms = float(np.sqrt(np.mean(sample**2)))
    levels = (sample[-1] - sample[0]) / (rms * np.sqrt(12)) * 10 ** (snr_db / 20) if rms else 1.0
    return int(np.clip(np.floor(np.log2(levels + 1)) - 2, 1, max_bits))


def _shared_sqnr_db(sample: np.ndarray, shared: SharedTensor) -> float:
    """``sqnr_db(sample, shared.decode())`` for a float64 ``sample``: the C kernel's sums
    (numpy's, bit for bit) where it is built, without the decoded array."""
    codes = shared.codes
    if (
        _kernels is None
        or not native()
        or sample.dtype != np.float64
        or codes.dtype not in (np.uint8, np.uint16)
    ):
        return sqnr_db(sample, shared.decode())
    table = np.zeros(1 << (8 * codes.itemsize))  # float64: the codebook widened, as sqnr_db does
    table[: shared.codebook.size] = shared.codebook
    flat = np.ascontiguousarray(sample).reshape(-1)
    noise, signal = _kernels.sq_sums(
        flat, 8, table, np.ascontiguousarray(codes), codes.itemsize, None, 1, 0, flat.size
    )
    if noise == 0:
        return float("inf")
    return 10 * np.log10(signal / noise) if signal else float("-inf")


def _entropy(codes: np.ndarray) -> float:
    counts = np.bincount(np.asarray(codes).ravel())
    p = counts[counts > 0] / codes.size
    return float(-(p * np.log2(p)).sum())


def _assign(fitted: SharedTensor, values: np.ndarray) -> np.ndarray:
    """``values`` replaced by their nearest centroid of ``fitted`` (exact zeros by the zero
    symbol when it has one), as the converter codes a tensor from its sample's clustering."""
    centroids = fitted.codebook[1:] if fitted.zero_symbol else fitted.codebook
    centroids = centroids.astype(np.float64)
    boundaries = (centroids[:-1] + centroids[1:]) / 2
    decoded = centroids[assign(boundaries, values)]  # np.searchsorted(..., side="right"), faster
    if fitted.zero_symbol:
        decoded[values == 0] = 0.0
    return decoded
