"""The driver: prune, share weights, retrain between stages, and encode every tensor."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import dcformat
from converters.pipeline.config import CompressionConfig, TensorPlan
from converters.pipeline.encode import candidates, cheapest, compact, encode_exact
from converters.pipeline.finetune import TrainedQuantizer
from converters.pipeline.prune import Pruner, prune_array
from converters.pipeline.quantize import SharedTensor, share_weights
from converters.pipeline.report import CompressionReport, TensorReport, stage_bytes
from converters.pipeline.retrain import Retrain, RetrainStage
from dcformat import dtypes

Evaluate = Callable[[nn.Module], float]


@dataclass
class CompressionResult:
    """The tensors to write (name -> Raw | Quantized, in the source order) and the report."""

    tensors: dict[str, dcformat.Raw | dcformat.Quantized]
    report: CompressionReport

    def save(self, path: str | os.PathLike[str], *, metadata: Mapping[str, str] | None = None) -> int:
        """Write the .dcnn file; returns its size, also recorded in the report."""
        dcformat.save_file(self.tensors, path, metadata=metadata)
        self.report.file_bytes = os.path.getsize(path)
        return self.report.file_bytes


@dataclass(frozen=True)
class _Exact:
    """A source tensor as stored bytes (bfloat16 as its bits) and its dtype name."""

    array: np.ndarray
    dtype: str

    def values(self) -> np.ndarray:
        if self.dtype == "bfloat16":
            return dtypes.bfloat16_to_float32(self.array)
        return self.array


def _exact(name: str, value: np.ndarray | torch.Tensor) -> _Exact:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.dtype == torch.bfloat16:
            return _Exact(t.view(torch.int16).numpy().view(np.uint16), "bfloat16")
        value = t.numpy()
    array = np.asarray(value)
    try:
        return _Exact(array, dtypes.name_of(array.dtype))
    except KeyError:
        raise ValueError(f"tensor {name!r} has unsupported dtype {array.dtype}") from None


def _plans(config: CompressionConfig, state: Mapping[str, _Exact]) -> dict[str, TensorPlan]:
    plans = {}
    for name, t in state.items():
        # bfloat16 is stored as uint16 bits; plan on the float dtype it holds.
        dtype = np.float32 if t.dtype == "bfloat16" else t.array.dtype
        plan = config.plan(name, t.array.shape, dtype)
        if plan is not None:
            plans[name] = plan
    return plans


def _share(values: np.ndarray, plan: TensorPlan, config: CompressionConfig) -> SharedTensor:
    return share_weights(values, plan.bits, init=plan.init, max_iter=config.kmeans_iters, seed=config.seed)


def _prune_and_share(values: np.ndarray, plan: TensorPlan, config: CompressionConfig) -> SharedTensor:
    return _share(prune_array(values, plan) if plan.prunes else values, plan, config)


def compress_state_dict(
    state: Mapping[str, np.ndarray | torch.Tensor], config: CompressionConfig | None = None
) -> CompressionResult:
    """Data-free compression: one-shot pruning (where a rule asks), k-means, Huffman.

    Tensors the config does not select are stored exactly.
    """
    config = config or CompressionConfig()
    exact = {name: _exact(name, value) for name, value in state.items()}
    plans = _plans(config, exact)
    shared = {name: _prune_and_share(exact[name].values(), plan, config) for name, plan in plans.items()}
    return _encode(exact, plans, shared, {})


def compress_model(
    model: nn.Module,
    config: CompressionConfig | None = None,
    *,
    retrain: Retrain | None = None,
    evaluate: Evaluate | None = None,
) -> CompressionResult:
    """Compress a model's state dict, retraining between stages when ``retrain`` is given.

    Stages: pruning in ``config.prune_steps`` rounds, each followed by retraining with the
    masks held; weight sharing by k-means; trained quantization (retraining the centroids,
    and the parameters left uncompressed); encoding. ``evaluate(model)``, if given, is
    recorded in ``report.metrics`` after each stage. The model is modified in place and ends
    holding the weights that the result decodes to.
    """
    config = config or CompressionConfig()
    params = dict(model.named_parameters())
    plans = _plans(config, {name: _exact(name, t) for name, t in model.state_dict().items()})
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
    quantizer = TrainedQuantizer(
        model,
        {name: _share(_exact(name, params[name]).values(), plan, config) for name, plan in trained.items()},
    )
    if trained:
        record("quantized")
    if retrain is not None and trained:
        others = [p for name, p in params.items() if name not in trained and p.requires_grad]
        stage = RetrainStage("quantize", "quantize", quantizer.parameters() + others)
        with quantizer.enforce():
            retrain(model, stage)
        record("fine-tuned")
    exact = {name: _exact(name, t) for name, t in model.state_dict().items()}
    shared = quantizer.shared()
    for name, plan in plans.items():  # selected buffers: nothing to retrain
        if name not in shared:
            shared[name] = _prune_and_share(exact[name].values(), plan, config)
    return _encode(exact, plans, shared, metrics)


def _encode(
    exact: Mapping[str, _Exact],
    plans: Mapping[str, TensorPlan],
    shared: Mapping[str, SharedTensor],
    metrics: dict[str, float],
) -> CompressionResult:
    tensors: dict[str, dcformat.Raw | dcformat.Quantized] = {}
    rows = []
    for name, t in exact.items():
        original = t.array.size * t.array.itemsize
        shape = tuple(t.array.shape)
        if name not in plans:
            tensor, stored, _ = cheapest(name, [encode_exact(t.array, t.dtype)])
            nonzeros = int(np.count_nonzero(t.values()))
            tensors[name] = tensor
            rows.append(
                TensorReport(
                    name=name,
                    shape=shape,
                    dtype=t.dtype,
                    encoding="raw",
                    nonzeros=nonzeros,
                    weight_bits=None,
                    index_bits=None,
                    original_bytes=original,
                    pruned_bytes=original,
                    quantized_bytes=original,
                    stored_bytes=stored,
                )
            )
            continue
        s = compact(shared[name])
        tensor, stored, index_bits = cheapest(name, candidates(s, t.dtype))
        tensors[name] = tensor
        survivors = np.flatnonzero(s.codes) if s.zero_symbol else None
        bits = plans[name].bits
        if isinstance(tensor, dcformat.Raw):
            encoding = "raw"
        else:
            encoding = "sparse" if tensor.sparse else "dense"
        rows.append(
            TensorReport(
                name=name,
                shape=shape,
                dtype=t.dtype,
                encoding=encoding,
                nonzeros=int(np.bincount(s.codes.ravel(), minlength=len(s.codebook))[s.codebook != 0].sum()),
                weight_bits=bits,
                index_bits=index_bits,
                original_bytes=original,
                pruned_bytes=stage_bytes(survivors, s.codes.size, 8 * t.array.itemsize),
                quantized_bytes=stage_bytes(survivors, s.codes.size, bits) + 4 * len(s.codebook),
                stored_bytes=stored,
            )
        )
    return CompressionResult(tensors, CompressionReport(rows, metrics))
