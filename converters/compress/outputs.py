"""A model's outputs on calibration data: the output error of compressed tensors, and (for
torch modules) each weight's importance. torch and onnxruntime are imported when used."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConvertError

MAX_INPUTS = 4096  # inputs per output of the layers whose input Hessian is measured (its size²)


def _relative_error(y: np.ndarray, y0: np.ndarray) -> float:
    norm = float(np.linalg.norm(y0))
    return float(np.linalg.norm(y - y0)) / (norm if norm > 0 else 1.0)


class _Bounded:
    """The mean over items of per-item errors (one per output; the largest output's mean
    counts), computed in item order. With a ``limit`` the items are run in the order of their
    errors at the last complete measurement, largest first, and the run stops as soon as the
    sums so far exceed ``limit`` times the number of items: the mean is then known to exceed
    ``limit`` (errors are never negative), and that lower bound is returned. The result, and
    whether a measurement stopped early, depend only on the calls made, never on timing."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.order = list(range(count))

    def mean(self, item_error: Callable[[int], list[float]], limit: float | None) -> float:
        errors: list[list[float] | None] = [None] * self.count
        sums: np.ndarray | None = None
        for i in self.order if limit is not None else range(self.count):
            errors[i] = item_error(i)
            sums = np.asarray(errors[i]) if sums is None else sums + errors[i]
            if limit is not None and float(np.max(sums)) > limit * self.count:
                return float(np.max(sums)) / self.count
        complete = np.asarray(errors, dtype=np.float64)
        self.order = sorted(range(self.count), key=lambda i: -float(np.max(complete[i])))
        return float(np.max(np.mean(complete, axis=0)))


class ModuleOutputs:
    """A ``torch.nn.Module`` run on calibration items: ``module(item)``, or ``module(*item)``
    for a tuple; each call must return a tensor."""

    def __init__(self, module: Any, items: Iterable[Any]) -> None:
        import torch

        self.module = module
        self.items = list(items)
        if not self.items:
            raise ConvertError("the calibration data is empty", rule="usage")
        self.params = dict(module.named_parameters())
        self.buffers = dict(module.named_buffers())
        with torch.no_grad():
            self.reference = [self._run(item).detach().float().numpy().copy() for item in self.items]
        self._bounded = _Bounded(len(self.items))

    def _run(self, item: Any) -> Any:
        import torch

        out = self.module(*item) if isinstance(item, tuple) else self.module(item)
        if not isinstance(out, torch.Tensor):
            raise ConvertError(
                f"the module returned a {type(out).__name__}, not a tensor: wrap it in a module whose "
                "forward returns the output tensor to compare",
                rule="usage",
            )
        if not torch.isfinite(out).all():
            raise ConvertError(
                "the module's output on a calibration item holds NaN or infinity", rule="usage"
            )
        return out

    def measurable(self, name: str) -> bool:
        """Whether :meth:`error` can replace the tensor ``name``."""
        return name in self.params or name in self.buffers

    def half(self, i: int) -> int:
        """Which half of the calibration items (0: the first, 1: the second) item ``i`` is in."""
        return int(i >= len(self.items) // 2)

    def error(
        self,
        replaced: Mapping[str, np.ndarray],
        limit: float | None = None,
        crossed: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> float:
        """Mean relative output error with the named tensors replaced by these values; with a
        ``limit``, possibly a lower bound above it (see :class:`_Bounded`). ``crossed``: tensors
        whose values were fitted to one half of the items (:meth:`half`; the pair: fitted to
        the first half, to the second), each item run with the values fitted to the other
        half, so that the error of such a fit is measured on items it did not see."""
        import torch

        crossed = crossed or {}
        tensors = {**self.params, **self.buffers}
        saved = {name: tensors[name].detach().clone() for name in {*replaced, *crossed}}
        try:
            with torch.no_grad():
                for name, values in replaced.items():
                    tensors[name].copy_(torch.from_numpy(np.ascontiguousarray(values)))

                def item_error(i: int) -> list[float]:
                    for name, fitted in crossed.items():
                        other = fitted[1 - self.half(i)]
                        tensors[name].copy_(torch.from_numpy(np.ascontiguousarray(other)))
                    return [_relative_error(self._run(self.items[i]).float().numpy(), self.reference[i])]

                return self._bounded.mean(item_error, limit)
        finally:
            with torch.no_grad():
                for name, value in saved.items():
                    tensors[name].copy_(value)

    def importance(self, names: Iterable[str], seed: int = 0) -> dict[str, np.ndarray]:
        """Each named parameter's Gauss-Newton diagonal of the squared relative output error:
        the mean over items of (∂(v·y)/∂w)² / ‖y₀‖², v a standard normal direction."""
        import torch

        wanted = [name for name in names if name in self.params]
        sums = {name: torch.zeros_like(self.params[name], dtype=torch.float32) for name in wanted}
        generator = torch.Generator().manual_seed(seed)
        for item, y0 in zip(self.items, self.reference, strict=True):
            self.module.zero_grad(set_to_none=True)
            out = self._run(item)
            v = torch.randn(out.shape, generator=generator, dtype=out.dtype)
            scale = float(np.linalg.norm(y0)) or 1.0
            ((out * v).sum() / scale).backward()
            for name in wanted:
                grad = self.params[name].grad
                if grad is not None:
                    sums[name] += grad.float() ** 2
        self.module.zero_grad(set_to_none=True)
        return {name: (total / len(self.items)).numpy().reshape(-1) for name, total in sums.items()}

    def input_hessians(self, names: Iterable[str]) -> dict[str, np.ndarray]:
        """For each named weight of an ``nn.Linear`` or an ungrouped, zero-padded ``nn.Conv2d``
        (its inputs unfolded into patches) with at most MAX_INPUTS inputs per output: the mean
        over items of XᵀX, X the layer's inputs on the item, one row per position (float64,
        inputs × inputs, in the order of a flat row of the weight: a conv's (channel, ky, kx));
        stacked with the same mean over the first half of the items and over the second
        (:meth:`half`): (3, inputs, inputs). Layers that either half never runs are left out."""
        import torch
        from torch import nn

        wanted = set(names)
        layers: dict[str, list[Any]] = {}
        for prefix, layer in self.module.named_modules():
            name = f"{prefix}.weight" if prefix else "weight"
            if name not in wanted or name not in self.params:
                continue
            plain_conv = (
                isinstance(layer, nn.Conv2d)
                and layer.groups == 1
                and not isinstance(layer.padding, str)
                and layer.padding_mode == "zeros"
            )
            if isinstance(layer, nn.Linear) or plain_conv:
                if layer.weight[0].numel() <= MAX_INPUTS:
                    layers.setdefault(name, []).append(layer)
        halves: dict[str, list[Any]] = {name: [0.0, 0.0] for name in layers}  # Σ XᵀX per half
        current = [0]  # the half of the item being run

        def hook(name: str, layer: Any) -> Callable[..., None]:
            def capture(_: Any, inputs: tuple[Any, ...]) -> None:
                x = inputs[0].detach()
                if isinstance(layer, nn.Conv2d):
                    x = torch.nn.functional.unfold(
                        x.reshape(-1, *x.shape[-3:]),
                        layer.kernel_size,
                        layer.dilation,
                        layer.padding,
                        layer.stride,
                    ).transpose(1, 2)
                x = x.reshape(-1, x.shape[-1]).double()
                halves[name][current[0]] = halves[name][current[0]] + x.T @ x

            return capture

        handles = [
            layer.register_forward_pre_hook(hook(name, layer)) for name, ls in layers.items() for layer in ls
        ]
        try:
            with torch.no_grad():
                for i, item in enumerate(self.items):
                    current[0] = self.half(i)
                    self._run(item)
        finally:
            for handle in handles:
                handle.remove()
        counts = (len(self.items) // 2, len(self.items) - len(self.items) // 2)
        out = {}
        for name, (first, second) in halves.items():
            if isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor):
                first, second = first.numpy(), second.numpy()
                out[name] = np.stack(
                    ((first + second) / len(self.items), first / counts[0], second / counts[1])
                )
        return out


def load_calibration(path: Path, graph_inputs: Mapping[str, tuple[str, int]]) -> list[dict[str, np.ndarray]]:
    """Calibration items from a ``.npz``: one array per graph input, named as the input;
    item i is ``array[i]`` of each. ``graph_inputs`` maps each input's name to its numpy
    dtype name and rank. Each mismatch is a one-line error naming the input."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError) as exc:
        raise ConvertError(f"cannot read the calibration data: {exc}", path=str(path)) from None
    if not arrays:
        raise ConvertError("the calibration .npz holds no arrays", path=str(path), rule="usage")
    for name in arrays:
        if name not in graph_inputs:
            raise ConvertError(
                f"calibration input {name!r} is not an input of the graph; "
                f"its inputs: {', '.join(graph_inputs)}",
                path=str(path),
                rule="usage",
            )
    counts = set()
    for name, (dtype, rank) in graph_inputs.items():
        if name not in arrays:
            raise ConvertError(
                f"the calibration data lacks graph input {name!r}", path=str(path), rule="usage"
            )
        array = arrays[name]
        if array.dtype.name != dtype:
            raise ConvertError(
                f"calibration input {name!r} is {array.dtype.name}; the graph takes {dtype}",
                path=str(path),
                rule="usage",
            )
        if array.ndim != rank + 1:
            raise ConvertError(
                f"calibration input {name!r} has {array.ndim} dimensions; expected {rank + 1} "
                f"(the sample axis, then the graph input's {rank})",
                path=str(path),
                rule="usage",
            )
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ConvertError(
                f"calibration input {name!r} holds NaN or infinity", path=str(path), rule="usage"
            )
        counts.add(len(array))
    if len(counts) != 1 or 0 in counts:
        raise ConvertError("calibration inputs must hold the same number (> 0) of samples", path=str(path))
    return [{name: arrays[name][i] for name in graph_inputs} for i in range(counts.pop())]


class OnnxOutputs:
    """An ONNX model run by onnxruntime on calibration items: the converter's skeleton of it
    (see ``converters.formats.onnx_model``) rebuilt with some weights replaced, so that every
    weight the converter takes (initializers, Constant values, subgraphs') can be measured."""

    def __init__(
        self,
        skeleton: bytes,
        weights: Mapping[str, Any],
        items: list[dict[str, np.ndarray]],
        per_output: bool = False,
    ) -> None:
        self.skeleton = skeleton
        self.weights = dict(weights)
        self.shapes = {name: (w.dtype, tuple(w.array.shape)) for name, w in self.weights.items()}
        self.items = items
        self.per_output = per_output
        session = self._session({})
        self.reference = [self._outputs(session, item) for item in items]
        self._bounded = _Bounded(len(items))

    def _session(self, replaced: Mapping[str, np.ndarray]) -> Any:
        import onnxruntime as ort

        from dcformat import dtypes

        from ..formats.onnx_model import rebuild

        def stored(name: str) -> np.ndarray:
            weight = self.weights[name]
            if name not in replaced:
                return weight.array
            return dtypes.convert_floats(np.asarray(replaced[name], dtype=np.float32), weight.dtype)

        model = rebuild(self.skeleton, self.shapes, stored)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    @staticmethod
    def _outputs(session: Any, item: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o, dtype=np.float64).reshape(-1) for o in session.run(None, dict(item))]

    def measurable(self, name: str) -> bool:
        """Whether :meth:`error` can replace the tensor ``name``."""
        return name in self.weights

    def error(self, replaced: Mapping[str, np.ndarray], limit: float | None = None) -> float:
        """Mean relative output error with the named tensors replaced by these values: of all
        outputs flattened and concatenated, or (``per_output``) the largest over the graph's
        outputs of each output's mean relative error. With a ``limit``, possibly a lower
        bound above it (see :class:`_Bounded`)."""
        session = self._session(replaced)

        def item_error(i: int) -> list[float]:
            ys, y0s = self._outputs(session, self.items[i]), self.reference[i]
            if self.per_output:
                return [_relative_error(y, y0) for y, y0 in zip(ys, y0s, strict=True)]
            return [_relative_error(np.concatenate(ys), np.concatenate(y0s))]

        return self._bounded.mean(item_error, limit)


def onnx_outputs(model: Any, calibration: Path, per_output: bool = False) -> OnnxOutputs:
    """An ONNX model's outputs on the calibration items of a ``.npz`` (see
    :func:`load_calibration`); ``model`` is the converter's ModelInput of it; ``per_output``:
    the error is the largest of the outputs' own (see :meth:`OnnxOutputs.error`)."""
    import onnx
    from onnx import helper

    graph = onnx.ModelProto.FromString(model.source.skeleton).graph
    initializers = {t.name for t in graph.initializer}
    inputs = {}
    for value in graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        inputs[value.name] = (dtype, len(tensor.shape.dim))
    items = load_calibration(calibration, inputs)
    return OnnxOutputs(model.source.skeleton, {w.name: w for w in model.weights()}, items, per_output)
