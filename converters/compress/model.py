"""Whole models: a state dict compressed data-free, or a live model pruned and quantized with
retraining between stages. Each tensor ends in :func:`converters.compress.tensor.encode_shared`
or :func:`~converters.compress.tensor.compress_weight`, the one data-free path."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

import dcformat

from ..weight import Weight, as_weight
from .config import SAFE, CompressionConfig, TensorPlan
from .report import CompressionReport
from .share import SharedTensor, share_weights
from .tensor import CompressedTensor, compress_weight, encode_shared, floors, plan_for

Evaluate = Callable[[Any], float]


@dataclass
class CompressionResult:
    """The encoded tensors (in the source order) and the report."""

    tensors: list[CompressedTensor]
    report: CompressionReport

    def save(self, path: str | os.PathLike[str], *, metadata: Mapping[str, str] | None = None) -> int:
        """Write the .dcnn file atomically; returns its size, also recorded in the report."""
        with dcformat.Writer(path, metadata=metadata) as writer:
            for tensor in self.tensors:
                writer.add_encoded(tensor.encoded)
            lossy = {t.report.name: round(t.error, 6) for t in self.tensors if t.error}
            if lossy:  # what dcnn-inspect shows per layer
                writer.set_source_attribute("errors", json.dumps(lossy, separators=(",", ":")))
        self.report.file_bytes = os.path.getsize(path)
        return self.report.file_bytes


def _result(tensors: list[CompressedTensor], metrics: dict[str, float]) -> CompressionResult:
    return CompressionResult(tensors, CompressionReport([t.report for t in tensors], metrics))


def compress_state_dict(state: Mapping[str, Any], config: CompressionConfig = SAFE) -> CompressionResult:
    """Data-free compression of numpy arrays or torch tensors, each as the CLI compresses it.

    Tensors the config does not select are stored exactly.
    """
    weights = [as_weight(name, value) for name, value in state.items()]
    chooser = floors(weights, config)
    return _result([compress_weight(w, config, floor=chooser.get(w.name)) for w in weights], {})


def compress_model(
    model: Any,
    config: CompressionConfig = SAFE,
    *,
    retrain: Any = None,
    evaluate: Evaluate | None = None,
) -> CompressionResult:
    """Compress a ``torch.nn.Module``, retraining between stages when ``retrain`` is given.

    Stages: pruning in ``config.prune_steps`` rounds, each followed by retraining with the
    masks held; weight sharing by k-means; trained quantization (retraining the centroids,
    and the parameters left uncompressed); encoding. ``retrain(model, stage)`` is a
    :class:`~converters.compress.retrain.Retrain`; ``evaluate(model)``, if given, is recorded
    in ``report.metrics`` after each stage. The model is modified in place and ends holding
    the weights that the result decodes to. Conv and fully connected layers are told from
    the module types.
    """
    from .finetune import TrainedQuantizer
    from .prune import Pruner
    from .retrain import RetrainStage

    params = dict(model.named_parameters())
    plans = model_plans(model, config)
    trained = {name: plan for name, plan in plans.items() if name in params}
    metrics: dict[str, float] = {}

    def record(stage: str) -> None:
        if evaluate is not None:
            metrics[stage] = float(evaluate(model))

    record("dense")
    to_prune = [plan for plan in trained.values() if plan.prunes]
    if to_prune:
        pruner = Pruner(model, to_prune, steps=config.prune_steps if retrain else 1)
        for step in range(1, pruner.steps + 1):
            pruner.step()
            if retrain is not None:
                trainable = [p for p in params.values() if p.requires_grad]
                stage = RetrainStage(f"prune {step}/{pruner.steps}", "prune", trainable)
                with pruner.enforce():
                    retrain(model, stage)
        record("pruned")
    quantizer = TrainedQuantizer(model, shared_weights(model, trained, config))
    if trained:
        record("quantized")
    if retrain is not None and trained:
        others = [p for name, p in params.items() if name not in trained and p.requires_grad]
        stage = RetrainStage("quantize", "quantize", quantizer.parameters() + others)
        with quantizer.enforce():
            retrain(model, stage)
        record("fine-tuned")
    return encode_model(model, config, plans, quantizer.shared(), metrics)


def model_weights(model: Any) -> dict[str, Weight]:
    """A ``torch.nn.Module``'s state as Weights, with roles and conv/fc from its layer types."""
    from ..formats.pytorch import module_uses

    uses = module_uses(model)
    weights = {}
    for name, tensor in model.state_dict().items():
        role, layer = uses.get(name, (None, None))
        weights[name] = replace(as_weight(name, tensor), layer=layer, role=role)
    return weights


def shared_weights(
    model: Any, plans: Mapping[str, TensorPlan], config: CompressionConfig
) -> dict[str, SharedTensor]:
    """Each planned tensor of a module weight-shared by k-means, as trained quantization starts."""
    return scaled_weights(model, plans, config, row_scales=False)[0]


def scaled_weights(
    model: Any,
    plans: Mapping[str, TensorPlan],
    config: CompressionConfig,
    *,
    row_scales: bool,
    row_counts: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, SharedTensor], dict[str, np.ndarray]]:
    """Each planned tensor of a module weight-shared by k-means, and with ``row_scales`` the
    float16 row scales of the float32 tensors of 2 dimensions or more, shared under them
    (:func:`~converters.compress.finetune.scaled_sharing`). The tensors named in ``row_counts``
    (with row scales, not pruned) are shared by how often each row is used
    (:func:`~converters.compress.row_usage.usage_sharing`)."""
    current = model_weights(model)
    row_counts = row_counts or {}
    unusable = [
        name
        for name in row_counts
        if name not in plans or not row_scales or current[name].array.ndim < 2 or plans[name].prunes
    ]
    if unusable:
        raise ValueError(
            f"row counts need an unpruned compressed tensor of 2+ dimensions and row scales: {unusable}"
        )
    shared, scales = {}, {}
    for name, plan in plans.items():
        weight = current[name]
        kmeans = {"init": plan.init, "max_iter": config.kmeans_iters, "seed": config.seed}
        if name in row_counts:
            from .row_usage import usage_sharing

            values, rows = weight.values().reshape(-1), weight.array.shape[0]
            shared[name], scales[name] = usage_sharing(values, rows, plan.bits, row_counts[name], **kmeans)
        elif row_scales and weight.dtype == "float32" and weight.array.ndim >= 2 and weight.array.size:
            from .finetune import scaled_sharing

            shared[name], scales[name] = scaled_sharing(
                weight.values().reshape(-1), weight.array.shape[0], plan.bits, **kmeans
            )
        else:
            shared[name] = share_weights(weight.values(), plan.bits, **kmeans)
    return shared, scales


def model_plans(model: Any, config: CompressionConfig) -> dict[str, TensorPlan]:
    """The config's plan of each tensor of a module that it compresses."""
    plans = {name: plan_for(config, weight) for name, weight in model_weights(model).items()}
    return {name: plan for name, plan in plans.items() if plan is not None}


def encode_model(
    model: Any,
    config: CompressionConfig,
    plans: Mapping[str, TensorPlan],
    shared: Mapping[str, SharedTensor],
    metrics: dict[str, float],
    scales: Mapping[str, np.ndarray] | None = None,
) -> CompressionResult:
    """The end of retraining: each tensor trained into ``shared`` (times its row ``scales``,
    where given) encoded as it is, the others (buffers, tensors not trained) through the
    data-free path."""
    scales = scales or {}
    tensors = []
    for name, weight in model_weights(model).items():
        if name in shared:
            tensors.append(encode_shared(weight, shared[name], plans[name].bits, scales=scales.get(name)))
        else:
            tensors.append(compress_weight(weight, config))
    return _result(tensors, metrics)
