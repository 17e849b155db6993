"""Which tensors take fewer bits best: each tensor's measured output error per byte saved.

Tensors differ widely in what a bit less costs: in MiniLM, one bit less on a feed-forward
output or on the last layer's value projection costs about 30 times the output error per byte
saved that most query and key projections cost. :func:`measure_sensitivity` measures it:
every tensor the config compresses is pruned to its plan's sparsity and weight-shared at its
plan's bits as trained quantization starts (data-free k-means, with the row scales and row
counts :func:`~converters.compress.recipe.deep_compress` is given), then each in turn at one
bit less (and, with ``down_by``, two, three... bits less), with the others unchanged, and
``error(model)`` is called for each. The result's :meth:`Sensitivities.fewer_bits` turns the
measurements into one rule per chosen tensor, the cheapest increase per byte saved first, to
append to the config before retraining. A tensor the error does not see at all (a head the
use does not read) shows an increase of 0 and goes down to the fewest bits measured.

The measurements are of one-shot pruning and sharing without retraining, and the increases
are added as if independent: the ranking is what they are for. Measure ``error`` on inputs
that are not those you judge the compressed model on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .config import CompressionConfig, LayerRule, TensorPlan
from .model import model_plans, model_weights, scaled_weights
from .prune import prune_array
from .tensor import encode_shared

ModelError = Callable[[Any], float]
"""``error(model)``: the model's output error on sample inputs, lower is better (for example
1 - the mean cosine of its outputs with the dense model's)."""


@dataclass(frozen=True)
class TensorSensitivity:
    """One tensor at fewer bits than its plan's, the others at theirs: the bytes its codes save
    in the file and the increase of the model's error."""

    name: str
    bits: int  # the bits measured at, fewer than the plan's
    saved_bytes: int
    increase: float


@dataclass(frozen=True)
class Sensitivities:
    """The model's error with every tensor at its plan's bits, and each tensor's measurements."""

    error: float
    tensors: tuple[TensorSensitivity, ...]

    def fewer_bits(self, max_increase: float) -> list[LayerRule]:
        """Rules giving tensors fewer bits while the increases (a negative one counted as 0)
        add up to at most ``max_increase``. Greedy, the cheapest error per byte saved first: each
        turn takes, over every tensor, the measured step down from where the tensor stands that
        costs least per byte (on a tie, the one that saves most) among the steps that fit."""
        if not max_increase >= 0:
            raise ValueError(f"max_increase must be a number >= 0, got {max_increase!r}")
        at: dict[str, TensorSensitivity | None] = {t.name: None for t in self.tensors}
        total = 0.0
        while True:
            steps = []
            for t in self.tensors:
                now = at[t.name]
                saved = t.saved_bytes - (now.saved_bytes if now else 0)
                added = max(t.increase, 0.0) - (max(now.increase, 0.0) if now else 0.0)
                if (now is None or t.bits < now.bits) and saved > 0 and total + added <= max_increase:
                    steps.append((added / saved, -saved, t.name, t.bits, t, added))
            if not steps:
                break
            *_, chosen, added = min(steps)
            at[chosen.name], total = chosen, total + added
        return [LayerRule(_exact_pattern(n), bits=t.bits) for n, t in at.items() if t is not None]


def measure_sensitivity(
    model: Any,
    error: ModelError,
    config: CompressionConfig,
    *,
    down_by: int = 1,
    row_scales: bool = False,
    row_counts: Mapping[str, np.ndarray] | None = None,
    progress: bool = True,
) -> Sensitivities:
    """Measure, for each trainable tensor that ``config`` compresses at 2 bits or more, what 1
    to ``down_by`` bits fewer (down to 1 bit) cost, one tensor at a time (see the module doc).
    ``row_scales`` and ``row_counts`` as for :func:`~converters.compress.recipe.deep_compress`.
    The model's weights are restored after."""
    import torch

    if down_by < 1:
        raise ValueError(f"down_by must be at least 1, got {down_by!r}")
    params = dict(model.named_parameters())
    plans = {n: p for n, p in model_plans(model, config).items() if n in params and p.bits > 1}
    levels = [
        {n: replace(p, bits=p.bits - k) for n, p in plans.items() if p.bits - k >= 1}
        for k in range(1, down_by + 1)
    ]
    original = {n: params[n].detach().clone() for n in plans}
    from .retrain import _bar

    bar = _bar(1 + sum(map(len, levels)), "sensitivity", progress)
    try:
        with torch.no_grad():
            weights = model_weights(model)
            for name, plan in plans.items():
                if plan.prunes:
                    pruned = prune_array(weights[name].values(), plan)
                    params[name].copy_(torch.from_numpy(pruned))
            at_plan = _coded(model, plans, config, row_scales, row_counts)
            at_fewer = [_coded(model, fewer, config, row_scales, row_counts) for fewer in levels]
            for name, (values, _) in at_plan.items():
                params[name].copy_(torch.from_numpy(values))
            base = float(error(model))
            _advance(bar)
            rows = []
            for fewer, coded in zip(levels, at_fewer, strict=True):
                for name, (values, size) in coded.items():
                    params[name].copy_(torch.from_numpy(values))
                    increase = float(error(model)) - base
                    params[name].copy_(torch.from_numpy(at_plan[name][0]))
                    rows.append(TensorSensitivity(name, fewer[name].bits, at_plan[name][1] - size, increase))
                    _advance(bar)
    finally:
        with torch.no_grad():
            for name, value in original.items():
                params[name].copy_(value)
        if bar is not None:
            bar.close()
    return Sensitivities(base, tuple(rows))


def _coded(
    model: Any,
    plans: Mapping[str, TensorPlan],
    config: CompressionConfig,
    row_scales: bool,
    row_counts: Mapping[str, np.ndarray] | None,
) -> dict[str, tuple[np.ndarray, int]]:
    """Each planned tensor's decoded values and stored bytes, shared as trained quantization starts."""
    counts = {n: c for n, c in (row_counts or {}).items() if n in plans}
    shared, scales = scaled_weights(model, plans, config, row_scales=row_scales, row_counts=counts)
    weights = model_weights(model)
    coded = {}
    for name in plans:
        tensor = encode_shared(weights[name], shared[name], plans[name].bits, scales=scales.get(name))
        coded[name] = (np.ascontiguousarray(tensor.values(weights[name])), tensor.encoded.stored_bytes)
    return coded


def _exact_pattern(name: str) -> str:
    """An fnmatch pattern matching ``name`` only."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def _advance(bar: Any) -> None:
    if bar is not None:
        bar.update()
