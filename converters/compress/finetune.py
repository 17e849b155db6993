"""Trained quantization: fine-tune the shared centroids of weight-shared layers.

Each weight is ``codebook[code]``. The gradient of a centroid is the sum of the gradients of
the weights in its cluster (Han et al., eq. 3); an optimizer updates the centroids and the
layer weights are re-materialized from them. The zero symbol of a pruned layer is not
trained, so pruned weights stay exactly 0.

With ``reassign`` the codes are not fixed: each shared weight also keeps a full-precision
shadow that takes the weight's gradient as it is (the straight-through estimate), and after
every step each weight takes the centroid nearest its shadow. Layers that need more than
the centroids' few degrees of freedom (transformers at 3-4 bits) recover far more this way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol, TypeVar

import numpy as np
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from converters.compress.share import SharedTensor


class SharedLayer:
    """One weight-shared parameter: trainable centroids plus fixed codes."""

    def __init__(self, param: nn.Parameter, shared: SharedTensor, reassign: bool = False) -> None:
        if param.numel() != shared.codes.size:
            raise ValueError(
                f"{shared.codes.size} codes do not fit a parameter of shape {tuple(param.shape)}"
            )
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
        # The shadow weights that codes follow (reassign), float32 like the centroids.
        self.shadow = None
        if reassign:
            self.shadow = nn.Parameter(self._pick(param.detach().reshape(-1)).float().clone())

    def _pick(self, flat: torch.Tensor) -> torch.Tensor:
        """The trained entries of a flat per-weight tensor."""
        return flat if self._trained is None else flat[self._trained]

    def codebook(self) -> torch.Tensor:
        """The full codebook, with the fixed 0.0 first when the layer has a zero symbol."""
        c = self.centroids.detach()
        return torch.cat([c.new_zeros(1), c]) if self.zero_symbol else c

    def centroid_grad(self, weight_grad: torch.Tensor) -> torch.Tensor:
        """Sum the weight gradients of each cluster: the centroid gradient."""
        g = self._pick(weight_grad.reshape(-1)).to(self.centroids.dtype)
        return torch.zeros_like(self.centroids).index_add_(0, self._cluster, g)

    def shadow_grad(self, weight_grad: torch.Tensor) -> torch.Tensor:
        """The weight gradients of the trained (not pruned) weights: the shadows' gradient."""
        return self._pick(weight_grad.reshape(-1)).to(torch.float32)

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
        """Write ``codebook[codes]`` into the layer weight."""
        with torch.no_grad():
            self.param.copy_(self.codebook()[self.codes].view_as(self.param))

    def shared(self) -> SharedTensor:
        """The current codebook and codes (flat, narrowed) as numpy."""
        codebook = self.codebook().cpu().numpy()
        codes = self.codes.cpu().numpy().astype(np.uint8 if len(codebook) <= 256 else np.uint16)
        return SharedTensor(codebook, codes, self.zero_symbol)


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
        self, model: nn.Module, shared: Mapping[str, SharedTensor], *, reassign: bool = False
    ) -> None:
        params = dict(model.named_parameters())
        missing = sorted(set(shared) - set(params))
        if missing:
            raise ValueError(f"cannot quantize {', '.join(missing)}: not parameters of the model")
        self.layers = {name: SharedLayer(params[name], s, reassign) for name, s in shared.items()}
        self.materialize()

    def parameters(self) -> list[nn.Parameter]:
        """The parameters to hand to an optimizer: the centroids (and the shadows, with
        ``reassign``)."""
        centroids = [layer.centroids for layer in self.layers.values()]
        return centroids + [layer.shadow for layer in self.layers.values() if layer.shadow is not None]

    def materialize(self) -> None:
        """Re-assign codes (with ``reassign``), then write every shared layer's weights."""
        for layer in self.layers.values():
            layer.reassign()
            layer.materialize()

    def shared(self) -> dict[str, SharedTensor]:
        """The current codebooks and codes."""
        return {name: layer.shared() for name, layer in self.layers.items()}

    @contextmanager
    def enforce(self) -> Iterator[None]:
        """Train through the centroids in this block.

        After backward each shared weight's gradient is moved into its centroids' gradient
        (the weight's own ``.grad`` is cleared, so an optimizer skips it), and after every
        optimizer step the weights are re-materialized from the centroids.
        """

        def into_centroids(layer: SharedLayer, grad: torch.Tensor) -> None:
            _accumulate(layer.centroids, layer.centroid_grad(grad))
            if layer.shadow is not None:
                _accumulate(layer.shadow, layer.shadow_grad(grad))

        with gradients_moved(self.layers.values(), into_centroids, self.materialize):
            yield


def _accumulate(param: nn.Parameter, grad: torch.Tensor) -> None:
    if param.grad is None:
        param.grad = grad
    else:
        param.grad += grad
