"""Trained quantization: fine-tune the shared centroids of weight-shared layers.

Each weight is ``codebook[code]``. The gradient of a centroid is the sum of the gradients of
the weights in its cluster (Han et al., eq. 3); an optimizer updates the centroids and the
layer weights are re-materialized from them. The zero symbol of a pruned layer is not
trained, so pruned weights stay exactly 0.

With ``reassign`` the codes are not fixed: each shared weight also keeps a full-precision
shadow that takes the weight's gradient as it is (the straight-through estimate), and after
every step each weight takes the centroid nearest its shadow. Layers that need more than
the centroids' few degrees of freedom (transformers at 3-4 bits) recover far more this way.

With row scales (format 1.1) each weight of a 2-D or wider float32 layer is
``codebook[code] * scale[row]`` (row: index along axis 0), the codebook shared by the whole
tensor and clustered on the scale-normalized rows (:func:`scaled_sharing`). The scales train
too: a scale's gradient is the sum over its row of the weight gradient times the weight's
centroid, and a centroid's the sum over its cluster of the weight gradient times the row's
scale. The trained parameter is each row's magnitude in weight units (the scale times the
tensor's mean row magnitude), so one optimizer rate suits it and the centroids; the weights
use the scale rounded to float16, as the file stores it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from converters.compress.share import SharedTensor, share_weights

FLOAT16_TINY = 2.0**-14  # the smallest normal float16: trained scales stay at or above it


def row_magnitudes(values: np.ndarray, rows: int) -> np.ndarray:
    """Each row's root mean square over its nonzero weights (float64); a row of zeros gets the
    mean of the others (or 1)."""
    square = np.square(values.reshape(rows, -1), dtype=np.float64)
    magnitudes = np.sqrt(square.sum(1) / np.maximum(np.count_nonzero(square, axis=1), 1))
    zero = magnitudes == 0
    magnitudes[zero] = magnitudes[~zero].mean() if not zero.all() else 1
    return magnitudes


def scaled_sharing(
    values: np.ndarray, rows: int, bits: int, **kmeans: Any
) -> tuple[SharedTensor, np.ndarray]:
    """Weight sharing under per-row scales: the shared tensor of ``values`` (flat, ``rows`` rows)
    divided row by row by its float16 scales, and the scales.

    A row's scale is its root mean square (over its nonzero weights) over the mean of those
    (about 1, so the codebook stays in the weights' units). The root mean square, not the
    largest |w|: a row's outliers then fall in the codebook's rarely used outer values, which
    Huffman coding keeps cheap, where scaling by the largest |w| spreads every row over the
    whole codebook (on MiniLM's 4-bit layers, about 0.1-0.5 bits a weight more for about 2%
    less error). The k-means weighs each normalized weight by its scale squared, so it
    minimizes the squared error of the weights themselves. ``kmeans`` goes to
    :func:`~converters.compress.share.share_weights`.
    """
    magnitudes = row_magnitudes(values, rows)
    scales = (magnitudes / magnitudes.mean()).astype(np.float16)
    if not (np.isfinite(scales).all() and (scales > 0).all()):
        raise ValueError("row scales do not fit float16")
    wide = scales.astype(np.float32)[:, None]
    normalized = (values.reshape(rows, -1) / wide).reshape(-1)
    importance = np.broadcast_to(wide**2, (rows, values.size // rows)).reshape(-1)
    return share_weights(normalized, bits, importance=importance, **kmeans), scales


class SharedLayer:
    """One weight-shared parameter: trainable centroids plus codes (and row scales)."""

    def __init__(
        self,
        param: nn.Parameter,
        shared: SharedTensor,
        reassign: bool = False,
        scales: np.ndarray | None = None,
    ) -> None:
        if param.numel() != shared.codes.size:
            raise ValueError(
                f"{shared.codes.size} codes do not fit a parameter of shape {tuple(param.shape)}"
            )
        if scales is not None and (param.dim() < 2 or scales.shape != (param.shape[0],)):
            raise ValueError(f"{scales.size} row scales do not fit a parameter of shape {tuple(param.shape)}")
        self.param = param
        self.zero_symbol = shared.zero_symbol
        first = 1 if shared.zero_symbol else 0
        values = torch.from_numpy(shared.codebook[first:].astype(np.float32))
        # float32 centroids even for half-precision layers: updates are too fine for 16 bits.
        self.centroids = nn.Parameter(values.to(param.device))
        self.codes = torch.from_numpy(shared.codes.astype(np.int64)).to(param.device)
        # Indices (into the flattened weight) of the trained weights (None: all of them) and
        # their centroid.
        self._trained = torch.nonzero(self.codes >= first).squeeze(1) if self.zero_symbol else None
        self._cluster = self._pick(self.codes) - first
        # Row scales: the trained row magnitudes (weight units) and their unit, the tensor's
        # mean magnitude; the row of each trained weight.
        self.magnitudes: nn.Parameter | None = None
        self._unit = 1.0
        if scales is not None:
            wide = scales.astype(np.float64)
            self._unit = float(row_magnitudes(param.detach().cpu().numpy(), len(scales)).mean())
            magnitudes = torch.from_numpy((wide * self._unit).astype(np.float32))
            self.magnitudes = nn.Parameter(magnitudes.to(param.device))
            width = param.numel() // param.shape[0]
            self._row = self._pick(torch.arange(param.numel(), device=param.device)) // width
        # The shadow weights that codes follow (reassign), float32 like the centroids; in the
        # codebook's units (the weights over their row scales).
        self.shadow = None
        if reassign:
            weights = self._pick(param.detach().reshape(-1)).float()
            if scales is not None:
                weights = weights / self._row_scale()
            self.shadow = nn.Parameter(weights.clone())

    def _pick(self, flat: torch.Tensor) -> torch.Tensor:
        """The trained entries of a flat per-weight tensor."""
        return flat if self._trained is None else flat[self._trained]

    def codebook(self) -> torch.Tensor:
        """The full codebook, with the fixed 0.0 first when the layer has a zero symbol."""
        c = self.centroids.detach()
        return torch.cat([c.new_zeros(1), c]) if self.zero_symbol else c

    def _stored(self) -> torch.Tensor:
        """The row scales as the file stores them (float16, > 0)."""
        assert self.magnitudes is not None
        with torch.no_grad():
            return (self.magnitudes / self._unit).clamp(FLOAT16_TINY, 65504.0).half()

    def _row_scale(self) -> torch.Tensor:
        """The stored scale of each trained weight's row, float32."""
        return self._stored().float()[self._row]

    def _trained_grad(self, weight_grad: torch.Tensor) -> torch.Tensor:
        """The gradient of each trained weight's codebook value: the weight gradient times the
        row scale."""
        g = self._pick(weight_grad.reshape(-1)).to(torch.float32)
        return g if self.magnitudes is None else g * self._row_scale()

    def centroid_grad(self, weight_grad: torch.Tensor) -> torch.Tensor:
        """Sum the weight gradients of each cluster (times their row scale): the centroid
        gradient."""
        g = self._trained_grad(weight_grad).to(self.centroids.dtype)
        return torch.zeros_like(self.centroids).index_add_(0, self._cluster, g)

    def magnitude_grad(self, weight_grad: torch.Tensor) -> torch.Tensor:
        """Sum over each row of the weight gradient times the weight's centroid, over the unit:
        the row magnitudes' gradient."""
        assert self.magnitudes is not None
        values = self.codebook()[self.codes].view(self.param.shape[0], -1)
        g = weight_grad.reshape(values.shape).to(torch.float32)
        return (g * values).sum(1) / self._unit

    def shadow_grad(self, weight_grad: torch.Tensor) -> torch.Tensor:
        """The gradients of the trained (not pruned) weights' codebook values: the shadows'."""
        return self._trained_grad(weight_grad)

    def reassign(self) -> None:
        """Give each trained weight the centroid nearest its shadow (ties: the lower value)."""
        if self.shadow is None:
            return
        with torch.no_grad():
            order = torch.argsort(self.centroids)
            ordered = self.centroids[order]
            nearest = torch.bucketize(self.shadow, (ordered[1:] + ordered[:-1]) / 2)
            self._cluster = order[nearest]
            if self._trained is None:
                self.codes = self._cluster
            else:
                self.codes[self._trained] = self._cluster + 1

    def materialize(self) -> None:
        """Write ``codebook[codes]`` (times the row scales) into the layer weight."""
        with torch.no_grad():
            values = self.codebook()[self.codes].view(self.param.shape[0], -1)
            if self.magnitudes is not None:  # kept where float16 holds the scales
                self.magnitudes.clamp_(FLOAT16_TINY * self._unit, 65504.0 * self._unit)
                values = values * self._stored().float()[:, None]
            self.param.copy_(values.view_as(self.param))

    def shared(self) -> SharedTensor:
        """The current codebook and codes (flat, narrowed) as numpy."""
        codebook = self.codebook().cpu().numpy()
        codes = self.codes.cpu().numpy().astype(np.uint8 if len(codebook) <= 256 else np.uint16)
        return SharedTensor(codebook, codes, self.zero_symbol)

    def scales(self) -> np.ndarray | None:
        """The row scales as the file stores them (numpy float16), or None without scales."""
        return None if self.magnitudes is None else self._stored().cpu().numpy()


class _Layer(Protocol):
    param: nn.Parameter


L = TypeVar("L", bound=_Layer)


@contextmanager
def gradients_moved(
    layers: Iterable[L], move: Callable[[L, torch.Tensor], None], after_step: Callable[[], None]
) -> Iterator[None]:
    """The hooks that train a layer through other parameters: after backward each layer's
    weight gradient goes to ``move(layer, grad)`` and the weight's own ``.grad`` is cleared
    (so an optimizer over all parameters skips it); ``after_step()`` runs after every
    optimizer step and once more at the end of the block."""

    def moved(param: torch.Tensor, layer: L) -> None:
        if param.grad is not None:
            move(layer, param.grad)
            param.grad = None

    handles = [
        layer.param.register_post_accumulate_grad_hook(lambda param, layer=layer: moved(param, layer))
        for layer in layers
    ]
    handles.append(register_optimizer_step_post_hook(lambda *_: after_step()))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        after_step()


class TrainedQuantizer:
    """Weight sharing over several parameters of a model, trainable through the centroids."""

    def __init__(
        self,
        model: nn.Module,
        shared: Mapping[str, SharedTensor],
        *,
        reassign: bool = False,
        scales: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """``scales``: float16 row scales of the layers shared under them (:func:`scaled_sharing`),
        trained with the centroids."""
        params = dict(model.named_parameters())
        missing = sorted(set(shared) - set(params))
        if missing:
            raise ValueError(f"cannot quantize {', '.join(missing)}: not parameters of the model")
        scales = scales or {}
        self.layers = {
            name: SharedLayer(params[name], s, reassign, scales.get(name)) for name, s in shared.items()
        }
        self.materialize()

    def parameters(self) -> list[nn.Parameter]:
        """The parameters to hand to an optimizer: the centroids (the row magnitudes of layers
        with row scales, and the shadows, with ``reassign``)."""
        layers = self.layers.values()
        return (
            [layer.centroids for layer in layers]
            + [layer.magnitudes for layer in layers if layer.magnitudes is not None]
            + [layer.shadow for layer in layers if layer.shadow is not None]
        )

    def materialize(self) -> None:
        """Re-assign codes (with ``reassign``), then write every shared layer's weights."""
        for layer in self.layers.values():
            layer.reassign()
            layer.materialize()

    def shared(self) -> dict[str, SharedTensor]:
        """The current codebooks and codes."""
        return {name: layer.shared() for name, layer in self.layers.items()}

    def scales(self) -> dict[str, np.ndarray]:
        """The current float16 row scales of the layers that have them."""
        found = {name: layer.scales() for name, layer in self.layers.items()}
        return {name: s for name, s in found.items() if s is not None}

    @contextmanager
    def enforce(self) -> Iterator[None]:
        """Train through the centroids in this block.

        After backward each shared weight's gradient is moved into its centroids' gradient
        (the weight's own ``.grad`` is cleared, so an optimizer skips it), and after every
        optimizer step the weights are re-materialized from the centroids.
        """

        def into_centroids(layer: SharedLayer, grad: torch.Tensor) -> None:
            _accumulate(layer.centroids, layer.centroid_grad(grad))
            if layer.magnitudes is not None:
                _accumulate(layer.magnitudes, layer.magnitude_grad(grad))
            if layer.shadow is not None:
                _accumulate(layer.shadow, layer.shadow_grad(grad))

        with gradients_moved(self.layers.values(), into_centroids, self.materialize):
            yield


def _accumulate(param: nn.Parameter, grad: torch.Tensor) -> None:
    if param.grad is None:
        param.grad = grad
    else:
        param.grad += grad
