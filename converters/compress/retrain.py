"""Retraining between stages: the callback protocol, the stages, distillation, and the one
epoch loop (:func:`train_loop`, and :class:`TrainLoop` running it per stage)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass, field, replace
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
    progress: Callable[[int, float], None] | None = None,
) -> None:
    """Minimize ``loss_fn`` over ``epochs`` passes of ``data`` with a cosine-decayed rate;
    ``progress(epoch, loss)`` is called after each step when given."""
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
    try:
        for epoch in range(epochs):
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
            for batch in data:
                opt.zero_grad()
                loss = loss_fn(model, batch)
                loss.backward()
                opt.step()
                if progress is not None:
                    progress(epoch, loss.item())
    finally:
        model.train(was_training)


Quantizer = Literal["kmeans", "ternary", "binary"]
QUANTIZERS: tuple[Quantizer, ...] = ("kmeans", "ternary", "binary")


@dataclass(frozen=True)
class Stage(RetrainStage):
    """A retraining stage of :func:`deep_compress`.

    ``kind`` is "prune" or "quantize"; ``quantizer`` says what the quantize stage trains
    ("kmeans": centroids; "ternary"/"binary": latent weights and scales). ``teacher`` is the
    frozen dense model when distilling, else None.
    """

    index: int = 0
    quantizer: Quantizer = "kmeans"
    teacher: nn.Module | None = None
    progress: bool = False


def distillation_loss(
    teacher: nn.Module, base: LossFn = classification_loss, temperature: float = 4.0
) -> LossFn:
    """``base`` plus temperature² x KL divergence to the teacher's softened outputs (logits).

    Batches are ``(inputs, ...)``; the model and the teacher are called on ``inputs``.
    """
    teacher.eval()

    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        x = batch[0]
        out = model(x)
        with torch.no_grad():
            target = F.log_softmax(teacher(x) / temperature, 1)
        kl = F.kl_div(F.log_softmax(out / temperature, 1), target, log_target=True, reduction="batchmean")
        return base(model, batch) + temperature**2 * kl

    return loss


@dataclass
class TrainLoop:
    """The plain epoch loop: SGD (momentum) with a cosine-decayed rate per stage.

    ``lr`` and ``prune_epochs`` serve the pruning stages, ``quantize_lr`` and ``quantize_epochs``
    the centroid fine-tuning (a centroid's gradient sums its cluster's, hence the small rate;
    ``quantize_optimizer="adam"`` makes the step independent of the cluster sizes).
    Ternary and binary stages use Adam at ``lowbit_lr`` for ``quantize_epochs``. ``distill`` is
    how the loss uses ``stage.teacher`` when there is one (default :func:`distillation_loss`).
    """

    data: Iterable[Any]
    loss_fn: LossFn = classification_loss
    prune_epochs: int = 4
    quantize_epochs: int = 4
    lr: float = 0.01
    quantize_lr: float = 1e-4
    lowbit_lr: float = 1e-3
    quantize_optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    distill: Callable[[nn.Module, LossFn], LossFn] = field(default=distillation_loss)

    def __post_init__(self) -> None:
        if self.prune_epochs < 0 or self.quantize_epochs < 0:
            raise ValueError("epochs must be >= 0")
        if self.quantize_optimizer not in ("sgd", "adam"):
            raise ValueError(f"quantize_optimizer must be 'sgd' or 'adam', got {self.quantize_optimizer!r}")

    def fit(self, model: nn.Module, epochs: int) -> None:
        """Train all of ``model``'s parameters for ``epochs`` at ``lr`` (e.g. the dense model)."""
        loop = replace(self, prune_epochs=epochs)
        loop(model, Stage("dense", "prune", [p for p in model.parameters() if p.requires_grad]))

    def __call__(self, model: nn.Module, stage: RetrainStage) -> None:
        """Run the loop for one stage."""
        lowbit = isinstance(stage, Stage) and stage.quantizer != "kmeans" and stage.kind == "quantize"
        epochs = self.prune_epochs if stage.kind == "prune" else self.quantize_epochs
        adam = lowbit or (stage.kind == "quantize" and self.quantize_optimizer == "adam")
        if adam:
            lr = self.lowbit_lr if lowbit else self.quantize_lr
        else:
            lr = self.lr if stage.kind == "prune" else self.quantize_lr
        teacher = stage.teacher if isinstance(stage, Stage) else None
        loss_fn = self.distill(teacher, self.loss_fn) if teacher is not None else self.loss_fn
        show = isinstance(stage, Stage) and stage.progress and epochs > 0 and bool(stage.parameters)
        bar = _bar(epochs * len(self.data) if isinstance(self.data, Sized) else None, stage.name, show)

        def progress(epoch: int, loss: float) -> None:
            bar.update()
            bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{loss:.4f}")

        try:
            train_loop(
                model,
                stage.parameters,
                self.data,
                loss_fn,
                epochs=epochs,
                lr=lr,
                momentum=self.momentum,
                weight_decay=0.0 if adam else self.weight_decay,
                optimizer="adam" if adam else "sgd",
                progress=progress if bar is not None else None,
            )
        finally:
            if bar is not None:
                bar.close()


def _bar(total: int | None, desc: str, show: bool) -> Any:
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)
