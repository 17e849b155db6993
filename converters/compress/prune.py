"""Magnitude pruning: per-tensor masks by target sparsity or by the paper's quality x std rule."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from converters.compress.config import TensorPlan


def sparsity_mask(weights: np.ndarray, sparsity: float, within: np.ndarray | None = None) -> np.ndarray:
    """Keep the ``n - round(sparsity * n)`` largest-magnitude weights (only inside ``within``)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    magnitude = np.abs(np.asarray(weights, dtype=np.float64)).ravel()
    if within is not None:
        magnitude = np.where(within.ravel(), magnitude, -1.0)
    n = magnitude.size
    keep = n - round(sparsity * n)
    mask = np.zeros(n, dtype=bool)
    mask[np.argpartition(magnitude, n - keep)[n - keep :]] = True
    if within is not None:
        mask &= within.ravel()
    return mask.reshape(np.shape(weights))


def quality_threshold(weights: np.ndarray, quality: float) -> float:
    """The paper's threshold: ``quality`` times the standard deviation of the weights."""
    return float(quality * np.std(np.asarray(weights, dtype=np.float64)))


def prune_array(weights: np.ndarray, plan: TensorPlan) -> np.ndarray:
    """One-shot pruning of a tensor to its plan's target; returns a pruned copy."""
    w = np.asarray(weights)
    if plan.quality is not None:
        mask = np.abs(w) > quality_threshold(w, plan.quality)
    else:
        mask = sparsity_mask(w, plan.sparsity or 0.0)
    return np.where(mask, w, np.zeros((), dtype=w.dtype))


class Pruner:
    """Iterative magnitude pruning of a model's parameters, with masks that hold in training.

    Each :meth:`step` prunes further, and the mask only shrinks. Over ``steps`` steps a sparsity
    target is reached geometrically (the kept fraction at step i is ``(1 - sparsity) ** (i /
    steps)``, so each step removes the same share of the survivors); a quality target raises the
    threshold linearly to ``quality`` x the std of the weights before the first step.
    """

    def __init__(self, model: nn.Module, plans: Iterable[TensorPlan], steps: int = 1) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        params = dict(model.named_parameters())
        self.plans = {plan.name: plan for plan in plans if plan.prunes}
        missing = sorted(set(self.plans) - set(params))
        if missing:
            raise ValueError(f"cannot prune {', '.join(missing)}: not parameters of the model")
        self.params = {name: params[name] for name in self.plans}
        self.steps = steps
        self.steps_done = 0
        self.masks: dict[str, torch.Tensor] = {}
        self._std: dict[str, float] = {}

    def step(self) -> None:
        """Prune to the next target of the schedule and zero the pruned weights."""
        if self.steps_done == self.steps:
            raise ValueError(f"all {self.steps} pruning steps are done")
        self.steps_done += 1
        fraction = self.steps_done / self.steps
        for name, plan in self.plans.items():
            w = self.params[name].detach().float().cpu().numpy()
            previous = self.masks.get(name)
            within = None if previous is None else previous.cpu().numpy()
            if plan.quality is not None:
                std = self._std.setdefault(name, float(np.std(w, dtype=np.float64)))
                mask = np.abs(w) > plan.quality * std * fraction
                if within is not None:
                    mask &= within
            else:
                kept = (1.0 - (plan.sparsity or 0.0)) ** fraction
                mask = sparsity_mask(w, 1.0 - kept, within)
            self.masks[name] = torch.from_numpy(mask).to(self.params[name].device)
        self.apply()

    def apply(self) -> None:
        """Zero every pruned weight."""
        with torch.no_grad():
            for name, mask in self.masks.items():
                self.params[name].mul_(mask)

    @contextmanager
    def enforce(self) -> Iterator[None]:
        """Hold the masks while training in this block.

        Gradients of pruned weights are zeroed, and after every optimizer step (of any torch
        optimizer) the pruned weights are set back to exactly 0, so momentum or weight decay
        cannot revive them.
        """
        handles = [
            param.register_hook(lambda grad, name=name: grad * self.masks[name])
            for name, param in self.params.items()
            if name in self.masks
        ]
        handles.append(register_optimizer_step_post_hook(lambda *_: self.apply()))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self.apply()
