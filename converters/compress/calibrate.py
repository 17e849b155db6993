"""Compression that looks at data: sample inputs weigh the k-means and pick each tensor's bits
so that the model's output error stays within a target.

The output error of a compressed model on calibration items is the mean over items of
‖y − y₀‖₂ / ‖y₀‖₂, y₀ the original model's output and y the compressed one's. Two things use it:

- **importance**: for a torch module, each weight's importance is the Gauss-Newton diagonal of
  that error, E[(∂(v·y)/∂w)²] / ‖y₀‖² over items and random directions v: what a change of
  the weight does to the output, through everything that follows it (norms, residual
  branches, depthwise filters). k-means then weighs each weight's squared error by it.
- **the search**: every tensor gets a ladder of settings (bits, centroid initialization, with
  or without per-row scales, or exact storage). Each
  setting's contribution to the squared output error is predicted (from the importance, or
  for graphs without gradients from one measured probe per tensor), the cheapest settings
  whose predicted sum fits the target are chosen (a Lagrangian sweep), and the whole
  model is measured; the budget shrinks until the measured error is within the target.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..errors import ConvertError
from ..weight import Weight
from .config import CompressionConfig, TensorPlan
from .tensor import CompressedTensor, compress_planned, plan_for

LADDER = (8, 7, 6, 5, 4, 3)  # bits tried per tensor, besides exact storage
INITS = ("density", "linear")  # centroid initializations tried at each bits
LADDER_ITERS = 30  # k-means iterations per setting tried (1-D Lloyd has mostly settled by then)
MAX_ROUNDS = 8  # measured rounds of the search before giving up on a target
PROBE_BITS = 4  # the setting measured alone per tensor when there is no importance

# evaluate({name: float values, the tensor's shape}) -> mean relative output error
Evaluate = Callable[[Mapping[str, np.ndarray]], float]


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


def calibrate(
    weights: Sequence[Weight],
    config: CompressionConfig,
    evaluate: Evaluate,
    *,
    target: float | None = None,
    importance: Mapping[str, np.ndarray] | None = None,
    measurable: Callable[[str], bool] | None = None,
) -> Calibrated:
    """Compress ``weights`` using calibration: importance-weighted k-means where
    ``importance`` has the tensor, and with a ``target`` the per-tensor bits of the smallest
    file whose measured output error is at most ``target``.

    Without a target every tensor keeps the config's plan. Tensors that ``evaluate`` cannot
    replace (``measurable(name)`` false: an ONNX Constant, a subgraph's weight) take the
    data-free path, which bounds their error without data. Raises ConvertError when no
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
    if target is None:
        chosen = {w.name: compress_planned(w, plans[w.name], config, importance.get(w.name)) for w in tuned}
        error = evaluate({w.name: chosen[w.name].values(w) for w in tuned})
        return Calibrated({**fixed, **chosen}, error, None, 1)
    if not target > 0:
        raise ConvertError(f"the output-error target must be positive, got {target}", rule="usage")
    ladders, probes = _ladders(tuned, plans, config, evaluate, importance)
    chosen, error, evaluations = _search(tuned, ladders, evaluate, target)
    if error > target:
        raise ConvertError(
            f"cannot reach an output error of {target:g}: the best found is {error:.4g}; "
            "raise --max-output-error or store more tensors exactly"
        )
    return Calibrated({**fixed, **chosen}, error, target, evaluations + probes)


def _ladders(
    weights: Sequence[Weight],
    plans: Mapping[str, TensorPlan | None],
    config: CompressionConfig,
    evaluate: Evaluate,
    importance: Mapping[str, np.ndarray],
) -> tuple[dict[str, list[_Option]], int]:
    """Each tensor's settings, cheapest first, with their predicted error; and the number of
    evaluations spent on probes."""
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
        if weight_importance is None:  # predict from one measured probe and the weight error
            probe = min(options, key=lambda o: abs(o[0] - PROBE_BITS))
            measured = evaluate({w.name: probe[2].reshape(w.array.shape)}) ** 2
            probes += 1
            scale = measured / max(_squared_error(values, probe[2]), 1e-30)
            costs = [scale * _squared_error(values, d) for _, _, d in options]
        else:
            imp = np.asarray(weight_importance, dtype=np.float64).reshape(-1)
            costs = [float(np.sum(imp * (values.astype(np.float64) - d) ** 2)) for _, _, d in options]
        ladder = [_Option(t, bits, c) for (bits, t, _), c in zip(options, costs, strict=True)]
        ladder.append(_Option(compress_planned(w, None, config), None, 0.0))
        ladders[w.name] = sorted(ladder, key=lambda o: o.tensor.encoded.stored_bytes)
    return ladders, probes


def _squared_error(values: np.ndarray, approx: np.ndarray) -> float:
    return float(np.sum((values.astype(np.float64) - approx) ** 2))


def _pick(ladders: Mapping[str, list[_Option]], budget: float) -> dict[str, _Option]:
    """The cheapest settings whose predicted squared errors sum to at most ``budget``: each
    tensor minimizes bytes + λ·cost, λ found by bisection (log scale)."""

    def choose(lam: float) -> dict[str, _Option]:
        return {
            name: min(ladder, key=lambda o: (o.tensor.encoded.stored_bytes + lam * o.cost, o.cost))
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
    """Shrink the predicted-error budget until the measured error is within the target; keep
    the smallest choice that met it (or the most accurate one if none did)."""
    by_name = {w.name: w for w in weights}
    budget = target**2
    best: tuple[int, dict[str, CompressedTensor], float] | None = None
    closest: tuple[float, dict[str, CompressedTensor]] | None = None
    evaluations = 0
    for _ in range(MAX_ROUNDS):
        choice = _pick(ladders, budget)
        tensors = {name: option.tensor for name, option in choice.items()}
        replaced = {
            name: option.tensor.values(by_name[name])
            for name, option in choice.items()
            if option.bits is not None
        }
        error = evaluate(replaced)
        evaluations += 1
        size = sum(t.encoded.stored_bytes for t in tensors.values())
        if error <= target:
            if best is None or size < best[0]:
                best = (size, tensors, error)
            if error > 0.8 * target or not replaced:
                break
            budget *= min((target / max(error, 1e-12)) ** 2, 4.0) * 0.9  # room left: spend it
        else:
            if closest is None or error < closest[0]:
                closest = (error, tensors)
            budget *= 0.8 * (target / error) ** 2
    if best is not None:
        return best[1], best[2], evaluations
    assert closest is not None
    return closest[1], closest[0], evaluations
