"""Retraining between stages: the callback protocol and a plain epoch loop implementing it."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

StageKind = Literal["prune", "quantize"]


@dataclass(frozen=True)
class RetrainStage:
    """One retraining phase: optimize ``parameters`` (masks/sharing are enforced meanwhile)."""

    name: str
    kind: StageKind
    parameters: list[nn.Parameter]


Retrain = Callable[[nn.Module, RetrainStage], None]
"""The user's retraining: any loop with any torch optimizer over ``stage.parameters``."""

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def classification_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Cross-entropy of ``model(inputs)`` for a batch ``(inputs, targets)``."""
    inputs, targets = batch
    return F.cross_entropy(model(inputs), targets)


@dataclass
class LoopRetrain:
    """Retrain with SGD (momentum) or Adam for a few epochs over ``data`` per stage.

    The learning rate follows a cosine decay to 0 over each stage; ``quantize_lr`` is used for
    the centroids (and the other parameters) in the trained-quantization stage. A centroid's
    gradient sums those of its whole cluster, hence the much smaller default.
    """

    data: Iterable[Any]
    loss_fn: LossFn = classification_loss
    prune_epochs: int = 4
    quantize_epochs: int = 4
    lr: float = 0.01
    quantize_lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    optimizer: Literal["sgd", "adam"] = "sgd"

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.prune_epochs < 0 or self.quantize_epochs < 0:
            raise ValueError("epochs must be >= 0")

    def __call__(self, model: nn.Module, stage: RetrainStage) -> None:
        """Run the loop for one stage."""
        epochs = self.prune_epochs if stage.kind == "prune" else self.quantize_epochs
        lr = self.lr if stage.kind == "prune" else self.quantize_lr
        train_loop(
            model,
            stage.parameters,
            self.data,
            self.loss_fn,
            epochs=epochs,
            lr=lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            optimizer=self.optimizer,
        )


def train_loop(
    model: nn.Module,
    parameters: Iterable[nn.Parameter],
    data: Iterable[Any],
    loss_fn: LossFn = classification_loss,
    *,
    epochs: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    optimizer: Literal["sgd", "adam"] = "sgd",
) -> None:
    """Minimize ``loss_fn`` over ``epochs`` passes of ``data`` with a cosine-decayed rate."""
    params = list(parameters)
    if epochs == 0 or not params:
        return
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=lr, momentum=momentum, weight_decay=weight_decay
        )
    else:
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    was_training = model.training
    model.train()
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        for batch in data:
            opt.zero_grad()
            loss_fn(model, batch).backward()
            opt.step()
    model.train(was_training)
