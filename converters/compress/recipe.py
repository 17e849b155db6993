"""The public retraining API: Deep Compression of a user's model with the user's data.

``deep_compress(model, train, evaluate, config)`` runs the paper's recipe: pruning in
``config.prune_steps`` rounds, each followed by retraining with the masks held; weight sharing
(k-means) and trained quantization of the centroids, or trained ternary/binary weights
(:mod:`converters.compress.ternary`); Huffman coding. ``train`` is either

- a :class:`TrainLoop` (data, a ``loss_fn(model, batch)`` and epochs; a bare iterable of
  ``(inputs, targets)`` batches means a TrainLoop with cross-entropy), or
- any callable ``train(model, stage)`` running the user's own loop over ``stage.parameters``
  (any torch optimizer; masks and sharing hold meanwhile).

With ``distill=True`` each stage carries ``stage.teacher``, a frozen copy of the dense model,
and a TrainLoop adds distillation to its loss. With ``checkpoint_dir`` the state after every
training stage is saved there, and a later call with the same arguments resumes after the last
saved stage, reaching the result an uninterrupted run reaches.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from converters.compress.config import PAPER, CompressionConfig
from converters.compress.finetune import TrainedQuantizer
from converters.compress.model import CompressionResult, Evaluate, encode_model, model_plans, scaled_weights
from converters.compress.prune import Pruner
from converters.compress.retrain import QUANTIZERS, Quantizer, RetrainStage, Stage, TrainLoop
from converters.compress.ternary import DEFAULT_THRESHOLD, LowBitQuantizer

Train = Callable[[nn.Module, RetrainStage], None]


def _fingerprint(*settings: Any, model: nn.Module) -> str:
    shapes = {name: list(p.shape) for name, p in model.state_dict().items()}
    text = json.dumps([*settings, shapes], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


class _Checkpoints:
    """``stage-<i>.pt`` files in a directory, written atomically, for one run's fingerprint.

    They are pickles (RNG states included): load only checkpoints you wrote.
    """

    def __init__(self, directory: str | os.PathLike[str] | None, fingerprint: str) -> None:
        self.dir = None if directory is None else Path(directory)
        self.fingerprint = fingerprint

    def latest(self) -> dict[str, Any] | None:
        if self.dir is None or not self.dir.is_dir():
            return None
        done = sorted(int(p.stem.split("-")[1]) for p in self.dir.glob("stage-*.pt"))
        if not done:
            return None
        state = torch.load(self.dir / f"stage-{done[-1]}.pt", weights_only=False)
        if state.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"checkpoints in {self.dir} belong to another run (model shapes, config, quantizer, "
                "threshold or distill differ)"
            )
        return state

    def save(self, index: int, state: dict[str, Any]) -> None:
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"stage-{index}.pt"
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save({**state, "fingerprint": self.fingerprint, "index": index}, tmp)
        os.replace(tmp, path)


def deep_compress(
    model: nn.Module,
    train: Train | TrainLoop | Iterable[Any],
    evaluate: Evaluate | None = None,
    config: CompressionConfig | None = None,
    *,
    quantizer: Quantizer = "kmeans",
    threshold: float = DEFAULT_THRESHOLD,
    distill: bool = False,
    reassign: bool = False,
    row_scales: bool = False,
    row_counts: Mapping[str, np.ndarray] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> CompressionResult:
    """Prune, retrain, share weights, fine-tune and encode ``model``; returns the result to save.

    ``config`` selects the tensors and sets per-layer sparsity (fraction removed, or a quality
    threshold), bits and the number of pruning rounds (``prune_steps``). ``quantizer``:
    "kmeans" (the paper: 2**bits shared values with trained centroids), "ternary" (TTQ,
    ``{-a, 0, +b}`` per layer with ``threshold`` x max|w| as the zero band) or "binary"
    (``{-a, +a}``; ``{-a, 0, +a}`` on pruned layers); the bits of the config apply to k-means
    only. ``evaluate(model)``, if given, is recorded in ``result.report.metrics`` after each
    stage (dense, pruned, quantized, fine-tuned). The model is modified in place and ends
    holding the weights the result decodes to.

    ``train``: a :class:`TrainLoop`, an iterable of ``(inputs, targets)`` batches (a TrainLoop
    with cross-entropy), or ``train(model, stage)`` for your own loop (see the module doc).
    ``distill``: ``stage.teacher`` is a frozen copy of the dense model (a TrainLoop adds
    distillation to its loss). ``reassign`` (k-means): the quantize stage also trains a
    full-precision shadow of each shared weight, and codes follow the shadows to their
    nearest centroid (see :mod:`converters.compress.finetune`); for models whose accuracy the
    centroids alone cannot recover. ``row_scales`` (k-means): each float32 weight tensor of 2
    dimensions or more is ``codebook[code] * scale[row]``, the k-means clustering the
    scale-normalized rows and the quantize stage training the float16 row scales with the
    centroids (format 1.1 scales). ``row_counts`` (with ``row_scales``): for lookup tables such
    as word embeddings, how often each row is used (e.g. each token's count in your text), by
    tensor name: a row's precision then follows its use at the bits' file size
    (:mod:`converters.compress.row_usage`). ``checkpoint_dir``: save after each stage and resume from the
    last saved one (same arguments and model shapes required). ``progress``: the TrainLoop's
    tqdm bar (stage, epoch, loss); custom loops see it as ``stage.progress``.
    """
    if quantizer not in QUANTIZERS:
        raise ValueError(f"quantizer must be one of {', '.join(QUANTIZERS)}, got {quantizer!r}")
    if row_counts and (quantizer != "kmeans" or not row_scales):
        raise ValueError("row_counts need the k-means quantizer with row_scales=True")
    config = config or PAPER  # retraining recovers what the paper's bits lose
    if not callable(train):
        if not isinstance(train, Iterable):
            raise TypeError("train must be a TrainLoop, a callable (model, stage) or an iterable of batches")
        train = TrainLoop(train)
    params = dict(model.named_parameters())
    plans = model_plans(model, config)
    trained = {name: plan for name, plan in plans.items() if name in params}
    to_prune = [plan for plan in trained.values() if plan.prunes]
    pruner = Pruner(model, to_prune, steps=config.prune_steps) if to_prune else None
    n_prune = pruner.steps if pruner is not None else 0
    settings = (config.to_dict(), quantizer, threshold, distill, reassign) + ((True,) if row_scales else ())
    if row_counts:
        digests = {
            n: hashlib.sha256(np.ascontiguousarray(c, np.float64).tobytes()).hexdigest()
            for n, c in row_counts.items()
        }
        settings += (digests,)
    fingerprint = _fingerprint(*settings, model=model)
    checkpoints = _Checkpoints(checkpoint_dir, fingerprint)
    teacher = None
    if distill:
        teacher = copy.deepcopy(model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    metrics: dict[str, float] = {}

    def record(name: str) -> None:
        if evaluate is not None:
            metrics[name] = float(evaluate(model))

    def stage(index: int, name: str, kind: Literal["prune", "quantize"], parameters: list) -> Stage:
        # Gradients left by the previous stage must not leak into this one (nor differ on resume).
        model.zero_grad(set_to_none=True)
        return Stage(name, kind, parameters, index, quantizer, teacher, progress)

    start = 0
    shared_state: Any = None
    resumed = checkpoints.latest()
    if resumed is None:
        record("dense")
    else:
        start = resumed["index"] + 1
        model.load_state_dict(resumed["model"])
        metrics.update(resumed["metrics"])
        if teacher is not None:
            teacher.load_state_dict(resumed["teacher"])
        if pruner is not None:
            pruner.masks = resumed["masks"]
            pruner.steps_done = min(start, n_prune)
            pruner._std = resumed["std"]
        shared_state = resumed.get("quantizer")
        _set_rng_state(resumed["rng"])

    def save(index: int, quantizer_state: Any = None) -> None:
        checkpoints.save(
            index,
            {
                "model": model.state_dict(),
                "metrics": dict(metrics),
                "teacher": None if teacher is None else teacher.state_dict(),
                "masks": {} if pruner is None else dict(pruner.masks),
                "std": {} if pruner is None else dict(pruner._std),
                "quantizer": quantizer_state,
                "rng": _rng_state(),
            },
        )

    trainable = [p for p in params.values() if p.requires_grad]
    for index in range(start, n_prune):
        assert pruner is not None
        pruner.step()
        with pruner.enforce():
            train(model, stage(index, f"prune {index + 1}/{n_prune}", "prune", trainable))
        if index == n_prune - 1:
            record("pruned")
        save(index)

    others = [p for name, p in params.items() if name not in trained and p.requires_grad]
    q: TrainedQuantizer | LowBitQuantizer
    if quantizer == "kmeans":
        shared, scales = shared_state or scaled_weights(
            model, trained, config, row_scales=row_scales, row_counts=row_counts
        )
        q = TrainedQuantizer(model, shared, reassign=reassign, scales=scales)
    else:
        q = LowBitQuantizer(model, list(trained), quantizer, threshold)
        if shared_state is not None:
            q.load_state(shared_state)
    if start <= n_prune:
        if trained:
            record("quantized")
            with q.enforce():
                train(model, stage(n_prune, "quantize", "quantize", q.parameters() + others))
            record("fine-tuned")
        save(n_prune, (q.shared(), q.scales()) if isinstance(q, TrainedQuantizer) else q.state())

    shared = q.shared()
    if quantizer != "kmeans":  # the report's weight bits: those of the 2- or 3-entry codebook
        for name in shared:
            plans[name] = replace(plans[name], bits=max(1, math.ceil(math.log2(len(shared[name].codebook)))))
    scales = q.scales() if isinstance(q, TrainedQuantizer) else None
    return encode_model(model, config, plans, shared, metrics, scales)
