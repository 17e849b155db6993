"""Compression that looks at data: sample inputs weigh the k-means and pick each tensor's bits
so that the model's output error stays within a target.

The output error of a compressed model on calibration items is the mean over items of
‖y − y₀‖₂ / ‖y₀‖₂, y₀ the original model's output and y the compressed one's. These use it:

- **importance**: for a torch module, each weight's importance is the Gauss-Newton diagonal of
  that error, E[(∂(v·y)/∂w)²] / ‖y₀‖² over items and random directions v: what a change of
  the weight does to the output, through everything that follows it (norms, residual
  branches, depthwise filters). k-means then weighs each weight's squared error by it.
- **error feedback** (``CompressionConfig.error_feedback``, off by default: see the measurements
  below): for the weights of layers whose inputs calibration captures (a torch
  module's ``nn.Linear`` and ungrouped ``nn.Conv2d``: ``ModuleOutputs.input_hessians``), the
  best setting of each bits up to FEEDBACK_BITS, with and without scales, is offered again
  with the same codebook and codes chosen by GPTQ-style error feedback on the layer's input
  Hessian XᵀX (:mod:`converters.compress.gptq`). Such codes fit the calibration items much better than
  they fit other inputs (on 8 images, a classifier's error can drop 100x on them and 1.2x on
  held-out photos), so the search never measures them on the items they were fitted to: each
  such setting also has codes fitted to the first half of the items and to the second, every
  item is measured with the codes of the other half (``ModuleOutputs.error(crossed=...)``),
  and its predicted cost is the same crossed layer error, Σ_r s_r ΔW_r H ΔW_rᵀ (s_r the
  row's share of the importance). The file's codes are fitted to all items; the error
  reported is theirs, measured, and where it missed the target (never seen so far) the
  search runs again without error feedback. Measured (``benchmarks/zoo.py --calibrated 0.1
  --error-feedback``), it has not bought bytes at equal held-out quality: MobileNetV2 from 8
  images 6.15x at logit cosine 0.9903 (without: 6.02x at 0.9928; at target 0.09, 5.88x at
  0.9930), MiniLM from 64 sentences 7.06x at cosine 0.9953 (without: 7.40x at 0.9946).
  Halves of interleaved items instead (each half sees every source) flatter it: MobileNetV2
  then reaches 6.91x with the held-out cosine at 0.9796; fitted to all items and measured on
  them, 8.35x at 0.917.
- **the search**: every tensor gets a ladder of settings (bits, centroid initialization, with
  or without per-row scales, or exact storage). Each
  setting's contribution to the squared output error is predicted (from the importance, or
  for graphs without gradients from one measured probe per tensor), the cheapest settings
  whose predicted sum fits the target are chosen (a Lagrangian sweep), and the whole
  model is measured; the budget shrinks until the measured error is within the target.
  The data-free chooser's coding of each tensor is one of its settings, and the search
  starts by measuring the data-free file: where that is within the target, no file the
  search keeps is larger. Last, single-tensor moves to smaller settings are measured one at
  a time (the most bytes saved per predicted error first) and kept while the measured error
  stays within the target, which corrects the predictions where they were wrong; they stop
  when the last few measurements saved next to nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from ..errors import ConvertError
from ..weight import Weight
from . import gptq
from .config import CompressionConfig, TensorPlan
from .share import SharedTensor
from .tensor import CompressedTensor, compress_planned, compress_weight, encode_shared, floors, plan_for

LADDER = (8, 7, 6, 5, 4, 3)  # bits tried per tensor, besides exact storage
INITS = ("density", "linear")  # centroid initializations tried at each bits
LADDER_ITERS = 30  # k-means iterations per setting tried (1-D Lloyd has mostly settled by then)
MAX_ROUNDS = 8  # measured rounds of the search before giving up on a target
REFINE_EVALS = 96  # measured single-tensor moves tried after the rounds, at most
REFINE_WINDOW = 8  # ... and they stop once this many in a row saved together
REFINE_GAIN = 0.002  # ... less than this fraction of the tensors' bytes
FEEDBACK_BITS = 6  # settings of at most this many bits get error-feedback codes too (above, the
# rounding error is too small for the feedback to buy bytes)
FEEDBACK_ELEMENTS = 1 << 22  # weights coded by error feedback at once (all settings of a tensor)
PROBE_BITS = 4  # the setting measured alone per tensor when there is no importance

# evaluate({name: float values, the tensor's shape}) -> mean relative output error. The search's
# last step calls evaluate(values, limit=target): the evaluate may then return any value above
# the limit as soon as the mean is known to exceed it (ModuleOutputs and OnnxOutputs do). With
# ``hessians``, it is also called with crossed={name: (values fitted to the first half of the
# items, to the second)}, as ModuleOutputs.error takes it.
Evaluate = Callable[..., float]


@dataclass(frozen=True)
class Calibrated:
    """The tensors chosen, the output error measured with them, and how the search went."""

    tensors: dict[str, CompressedTensor]
    error: float
    target: float | None
    evaluations: int


@dataclass(frozen=True)
class _Option:
    tensor: CompressedTensor
    bits: int | None  # None: stored exactly
    cost: float  # predicted squared relative output error
    data_free: bool = False  # the coding a conversion without calibration data gives
    crossed: _Crossed | None = None  # error-feedback codes fitted to each half of the items

    @cached_property
    def size(self) -> int:
        """The tensor's bytes in the file (packed once: the search asks for them often)."""
        return self.tensor.encoded.stored_bytes


@dataclass(frozen=True)
class _Crossed:
    """Error-feedback codes of a tensor fitted to the first half of the calibration items and
    to the second (:meth:`ModuleOutputs.half`), into one codebook: measured crossed (each
    item with the codes fitted to the other half), they tell what the codes fitted to all
    items do on inputs they did not see."""

    codebook: np.ndarray
    scales: np.ndarray | None  # one per row
    codes: tuple[np.ndarray, np.ndarray]  # (rows, columns) each

    def values(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """The decoded values of each half's codes, in ``shape``."""
        decoded = []
        for codes in self.codes:
            v = self.codebook[codes]
            if self.scales is not None:
                v = v * self.scales[:, None]
            decoded.append(v.astype(np.float32).reshape(shape))
        return decoded[0], decoded[1]


def calibrate(
    weights: Sequence[Weight],
    config: CompressionConfig,
    evaluate: Evaluate,
    *,
    target: float | None = None,
    importance: Mapping[str, np.ndarray] | None = None,
    measurable: Callable[[str], bool] | None = None,
    hessians: Mapping[str, np.ndarray] | None = None,
) -> Calibrated:
    """Compress ``weights`` using calibration: importance-weighted k-means where
    ``importance`` has the tensor, and with a ``target`` the per-tensor bits of the smallest
    file whose measured output error is at most ``target``.

    Without a target every tensor keeps the config's plan. Tensors that ``evaluate`` cannot
    replace (``measurable(name)`` false: an ONNX Constant, a subgraph's weight) take the
    data-free path, which bounds their error without data. ``hessians`` (a layer's input
    XᵀX, inputs × inputs, for tensors whose flat rows are a layer's weights on those inputs)
    add, to each such tensor's settings, the same codebooks coded by error feedback
    (:mod:`converters.compress.gptq`). Raises ConvertError when no
    setting within the search reaches the target (with the best error it found).
    """
    importance = importance or {}
    plans = {w.name: plan_for(config, w) for w in weights}
    fixed = {w.name: compress_planned(w, None, config) for w in weights if plans[w.name] is None}
    if measurable is not None:
        fixed.update(
            {
                w.name: compress_planned(w, plans[w.name], config)
                for w in weights
                if w.name not in fixed and not measurable(w.name)
            }
        )
    tuned = [w for w in weights if w.name not in fixed]
    evaluate = _with_fixed(evaluate, weights, fixed, measurable)
    if target is None:
        chosen = {w.name: compress_planned(w, plans[w.name], config, importance.get(w.name)) for w in tuned}
        error = evaluate({w.name: chosen[w.name].values(w) for w in tuned})
        return Calibrated({**fixed, **chosen}, error, None, 1)
    if not target > 0:
        raise ConvertError(f"the output-error target must be positive, got {target}", rule="usage")
    defaults = _data_free(weights, tuned, config)
    ladders, probes = _ladders(tuned, plans, config, evaluate, importance, defaults, hessians or {})
    chosen, error, evaluations = _search(tuned, ladders, evaluate, target)
    if error > target:
        raise ConvertError(
            f"cannot reach an output error of {target:g}: the best found is {error:.4g}; "
            "raise --max-output-error or store more tensors exactly"
        )
    return Calibrated({**fixed, **chosen}, error, target, evaluations + probes)


def _with_fixed(
    evaluate: Evaluate,
    weights: Sequence[Weight],
    fixed: Mapping[str, CompressedTensor],
    measurable: Callable[[str], bool] | None,
) -> Evaluate:
    """``evaluate`` with the tensors kept out of the search that the file does not hold
    exactly (stored as float16) replaced too, wherever ``evaluate`` can replace them."""
    changed = {
        w.name: fixed[w.name].values(w)
        for w in weights
        if w.name in fixed and not fixed[w.name].lossless and (measurable is None or measurable(w.name))
    }
    if not changed:
        return evaluate
    return lambda values, **kwargs: evaluate({**changed, **values}, **kwargs)


def _data_free(
    weights: Sequence[Weight], tuned: Sequence[Weight], config: CompressionConfig
) -> dict[str, CompressedTensor]:
    """The data-free coding of each tuned tensor, as a conversion without calibration writes
    it (the chooser's floors allocated over all ``weights``)."""
    allocated = floors(weights, config)
    return {w.name: compress_weight(w, config, floor=allocated.get(w.name)) for w in tuned}


def _ladders(
    weights: Sequence[Weight],
    plans: Mapping[str, TensorPlan | None],
    config: CompressionConfig,
    evaluate: Evaluate,
    importance: Mapping[str, np.ndarray],
    defaults: Mapping[str, CompressedTensor],
    hessians: Mapping[str, np.ndarray],
) -> tuple[dict[str, list[_Option]], int]:
    """Each tensor's settings, cheapest first, with their predicted error; and the number of
    evaluations spent on probes. The first setting of each ladder that is not stored exactly
    is the tensor's data-free coding (``defaults``), when it has one: see :func:`_start`."""
    ladders: dict[str, list[_Option]] = {}
    probes = 0
    for w in weights:
        plan = plans[w.name]
        assert plan is not None
        values = w.values().astype(np.float32).reshape(-1)
        weight_importance = importance.get(w.name)
        options = []
        quick = replace(config, kmeans_iters=min(config.kmeans_iters, LADDER_ITERS))
        scalings = (False, True) if w.dtype == "float32" and w.array.ndim >= 2 else (False,)
        for bits in sorted({*LADDER, plan.bits}, reverse=True):
            for init in dict.fromkeys((plan.init, *INITS)):
                for scaled in scalings:
                    setting = replace(plan, bits=bits, init=init, snr=None)
                    tensor = compress_planned(w, setting, quick, weight_importance, scaled)
                    options.append((bits, tensor, tensor.values(w).reshape(-1)))
        default = defaults[w.name]
        if default.codes is not None:
            options.insert(0, (default.report.weight_bits, default, default.values(w).reshape(-1)))
        if weight_importance is None:  # predict from one measured probe and the weight error
            probe = min(options, key=lambda o: abs(o[0] - PROBE_BITS))
            measured = evaluate({w.name: probe[2].reshape(w.array.shape)}) ** 2
            probes += 1
            scale = measured / max(_squared_error(values, probe[2]), 1e-30)
            costs = [scale * _squared_error(values, d) for _, _, d in options]
        else:
            imp = np.asarray(weight_importance, dtype=np.float64).reshape(-1)
            costs = [float(np.sum(imp * (values.astype(np.float64) - d) ** 2)) for _, _, d in options]
        ladder = [_Option(t, bits, c, t is default) for (bits, t, _), c in zip(options, costs, strict=True)]
        if w.name in hessians and weight_importance is not None and not plan.prunes:  # pruned: zeros kept
            best: dict[tuple[int, bool], _Option] = {}  # per bits and scaling: the least predicted cost
            for o in ladder:
                key = (o.bits, o.tensor.scales is not None)
                if o.tensor.codes is None or o.bits is None or o.bits > FEEDBACK_BITS:
                    continue
                if key not in best or o.cost < best[key].cost:
                    best[key] = o
            fed = _fed_back(
                w, [(o.bits, o.tensor) for o in best.values()], hessians[w.name], weight_importance
            )
            ladder += [_Option(t, bits, cost, crossed=crossed) for bits, t, crossed, cost in fed]
        ladder.append(_Option(compress_planned(w, None, config), None, 0.0, default.codes is None))
        ladders[w.name] = sorted(ladder, key=lambda o: o.size)
    return ladders, probes


def _fed_back(
    weight: Weight,
    options: Sequence[tuple[int, CompressedTensor]],
    hessians: np.ndarray,
    importance: np.ndarray,
) -> list[tuple[int, CompressedTensor, _Crossed, float]]:
    """The coded ``options`` with their codebooks (and row scales) kept and their codes found
    by error feedback (:mod:`converters.compress.gptq`) on the layer's input Hessians
    (``hessians``: of all items, of the first half, of the second). Each comes with its codes
    fitted to each half, and its predicted cost: the crossed layer error Σ_r s_r ΔW_r H ΔW_rᵀ,
    ΔW fitted to one half and H of the other, s_r the row's sensitivity that makes the
    importance's diagonal s_r H_jj (the importance split into a row factor and an input
    factor, as K-FAC splits a Hessian); computed for one setting, and for the others, their
    halves' own errors (which error feedback gives) times the same ratio."""
    rows = weight.array.shape[0] if weight.array.ndim >= 2 else 0
    cols = weight.array.size // rows if rows else 0
    coded = [(bits, t) for bits, t in options if t.codes is not None]
    if not coded or hessians.shape != (3, cols, cols):
        return []
    flat = weight.values().reshape(-1)
    values = flat.astype(np.float64).reshape(rows, cols)
    zeros = values == 0
    fixed = zeros if zeros.any() else None
    if fixed is not None:  # a zero symbol: code 0 is exactly zero
        coded = [(bits, t) for bits, t in coded if t.codebook[0] == 0]
    factors = [gptq.inverse_factor(h) for h in hessians]
    imp = np.asarray(importance, np.float64).reshape(rows, cols)
    sensitivity = imp.sum(axis=1) / max(float(np.trace(hessians[0])), 1e-300)
    fed = []
    per_chunk = max(1, FEEDBACK_ELEMENTS // values.size)
    for first in range(0, len(coded), per_chunk):
        chunk = coded[first : first + per_chunk]
        scales = np.concatenate([np.ones(rows) if t.scales is None else t.scales for _, t in chunk])
        fits = [
            gptq.quantize(
                np.tile(values, (len(chunk), 1)),
                [t.codebook for _, t in chunk],
                [rows] * len(chunk),
                order,
                factor,
                scales,
                None if fixed is None else np.tile(fixed, (len(chunk), 1)),
            )
            for order, factor in factors
        ]
        for g, (bits, tensor) in enumerate(chunk):
            part = slice(g * rows, (g + 1) * rows)
            codes = [fitted[part].astype(tensor.codes.dtype) for fitted, _ in fits]
            shared = SharedTensor(tensor.codebook.astype(np.float32), codes[0].reshape(-1), fixed is not None)
            scale = None if tensor.scales is None else tensor.scales.astype(np.float16)
            result = encode_shared(weight, shared, bits, flat, scale)
            if result.codes is None:
                continue
            crossed = _Crossed(tensor.codebook, tensor.scales, (codes[1], codes[2]))
            halves = sum(float(sensitivity @ (loss[part] * scales[part] ** 2)) for _, loss in fits[1:]) / 2
            fed.append((bits, result, crossed, halves))
    if not fed:
        return []
    # Each half's own layer error comes with the codes; the crossed one (ΔW of one half, H of
    # the other) costs a product of size rows x inputs²: it is computed for one setting, and
    # the others' are their own errors scaled alike.
    bits, _, crossed, halves = fed[len(fed) // 2]
    exact = 0.0
    for fitted, other in zip(crossed.values((rows, cols)), (hessians[2], hessians[1]), strict=True):
        delta = values - fitted
        exact += float(sensitivity @ np.sum((delta @ other) * delta, axis=1)) / 2
    ratio = exact / max(halves, 1e-300)
    return [(bits, result, crossed, ratio * halves) for bits, result, crossed, halves in fed]


def _squared_error(values: np.ndarray, approx: np.ndarray) -> float:
    return float(np.sum((values.astype(np.float64) - approx) ** 2))


def _pick(ladders: Mapping[str, list[_Option]], budget: float) -> dict[str, _Option]:
    """The cheapest settings whose predicted squared errors sum to at most ``budget``: each
    tensor minimizes bytes + λ·cost, λ found by bisection (log scale)."""

    def choose(lam: float) -> dict[str, _Option]:
        return {
            name: min(ladder, key=lambda o: (o.size + lam * o.cost, o.cost))
            for name, ladder in ladders.items()
        }

    def total(choice: Mapping[str, _Option]) -> float:
        return sum(o.cost for o in choice.values())

    low, high = 0.0, 1.0
    while total(choose(high)) > budget and high < 1e30:
        low, high = high, high * 16
    for _ in range(60):
        mid = (low + high) / 2 if low else high / 2
        if total(choose(mid)) <= budget:
            high = mid
        else:
            low = mid
        if high - low <= 1e-6 * high:
            break
    return choose(high)


def _search(
    weights: Sequence[Weight], ladders: Mapping[str, list[_Option]], evaluate: Evaluate, target: float
) -> tuple[dict[str, CompressedTensor], float, int]:
    """The data-free choice measured first; then the predicted-error budget shrunk until the
    measured error is within the target; then measured single-tensor moves (:func:`_refine`).
    The smallest choice that met the target is kept (or the most accurate one if none did)."""
    by_name = {w.name: w for w in weights}
    evaluations = 0
    decoded: dict[str, tuple[_Option, np.ndarray]] = {}  # each tensor's last measured setting

    def values(name: str, option: _Option) -> np.ndarray:
        if name not in decoded or decoded[name][0] is not option:
            decoded[name] = (option, option.tensor.values(by_name[name]))
        return decoded[name][1]

    halves: dict[str, tuple[_Option, tuple[np.ndarray, np.ndarray]]] = {}  # the same, crossed

    def crossed(name: str, option: _Option) -> tuple[np.ndarray, np.ndarray]:
        assert option.crossed is not None
        if name not in halves or halves[name][0] is not option:
            halves[name] = (option, option.crossed.values(by_name[name].array.shape))
        return halves[name][1]

    def measure(
        choice: Mapping[str, _Option], limit: float | None = None, fitted: bool = False
    ) -> tuple[float, int]:
        """The choice's measured error (``fitted``: error-feedback codes as fitted to all the
        items; else measured crossed) and bytes."""
        nonlocal evaluations
        evaluations += 1
        coded = {name: o for name, o in choice.items() if not o.tensor.lossless}
        kwargs: dict[str, object] = {} if limit is None else {"limit": limit}
        if not fitted and any(o.crossed is not None for o in coded.values()):
            kwargs["crossed"] = {n: crossed(n, o) for n, o in coded.items() if o.crossed is not None}
            coded = {n: o for n, o in coded.items() if o.crossed is None}
        error = evaluate({name: values(name, option) for name, option in coded.items()}, **kwargs)
        return error, sum(o.size for o in choice.values())

    start = {name: next(o for o in ladder if o.data_free) for name, ladder in ladders.items()}
    error, size = measure(start)
    best: tuple[int, dict[str, _Option], float] | None = (size, start, error) if error <= target else None
    closest: tuple[float, dict[str, _Option]] = (error, start)
    budget = target**2
    for _ in range(MAX_ROUNDS):
        choice = _pick(ladders, budget)
        error, size = measure(choice)
        if error <= target:
            if best is None or size < best[0]:
                best = (size, choice, error)
            if error > 0.8 * target or all(o.bits is None for o in choice.values()):
                break
            budget *= min((target / max(error, 1e-12)) ** 2, 4.0) * 0.9  # room left: spend it
        else:
            if error < closest[0]:
                closest = (error, choice)
            budget *= 0.8 * (target / error) ** 2
    if best is None:
        return {n: o.tensor for n, o in closest[1].items()}, closest[0], evaluations
    size, choice, error = best
    choice, error = _refine(choice, error, ladders, measure, target)
    if any(o.crossed is not None for o in choice.values()):  # the file's codes: fitted to all items
        error, _ = measure(choice, fitted=True)
        if error > target:  # not seen yet; without error feedback, the search as it was
            plain = {n: [o for o in ladder if o.crossed is None] for n, ladder in ladders.items()}
            chosen, error, more = _search(weights, plain, evaluate, target)
            return chosen, error, evaluations + more
    return {n: o.tensor for n, o in choice.items()}, error, evaluations


def _refine(
    choice: Mapping[str, _Option],
    error: float,
    ladders: Mapping[str, list[_Option]],
    measure: Callable[[Mapping[str, _Option], float], tuple[float, int]],
    target: float,
) -> tuple[dict[str, _Option], float]:
    """Single-tensor moves to smaller settings, measured one at a time: each tensor's move is
    the smaller setting of least predicted error added per byte saved, moves are tried in
    that order, and one is kept when the measured error stays within ``target``; a setting
    that failed rules out, for its tensor, every setting predicted no better. At most
    REFINE_EVALS measurements, and no more once the last REFINE_WINDOW of them saved less than
    REFINE_GAIN of the bytes together (a rule on what the measurements buy, never on time)."""
    current = dict(choice)
    ruled_out: dict[str, float] = {}  # tensor -> the least predicted cost of a failed move
    sizes = [sum(o.size for o in current.values())]  # after each measurement
    for _ in range(REFINE_EVALS):
        if len(sizes) > REFINE_WINDOW and sizes[-1 - REFINE_WINDOW] - sizes[-1] < REFINE_GAIN * sizes[-1]:
            break
        moves = []
        for name, option in current.items():
            size = option.size
            limit = ruled_out.get(name, float("inf"))
            smaller = [o for o in ladders[name] if o.size < size and o.cost < limit]
            if not smaller:
                continue
            rates = [
                (max(o.cost - option.cost, 0.0) / (size - o.size), o.cost, i) for i, o in enumerate(smaller)
            ]
            rate, _, i = min(rates)
            moves.append((rate, smaller[i].size - size, name, smaller[i]))
        if not moves:
            break
        _, _, name, move = min(moves, key=lambda m: m[:3])
        trial = {**current, name: move}
        measured, _ = measure(trial, target)  # may stop early once above the target
        if measured <= target:
            current, error = trial, measured
        else:
            ruled_out[name] = min(ruled_out.get(name, float("inf")), move.cost)
        sizes.append(sum(o.size for o in current.values()))
    return current, error
