"""Trained ternary (Zhu et al. 2017, TTQ) and binary weights, trained end to end.

Each quantized layer keeps a latent full-precision copy of its weights, normalized once to
[-1, 1] by the layer's largest magnitude ``m``, and learned positive scales:

- ternary: ``w = m * {-a, 0, +b}``: latent above ``t * max|latent|`` gives ``+b``, below its
  negative ``-a``, the rest 0 (``t`` is the threshold hyper-parameter);
- binary: ``w = m * {-a, +a}`` by the latent's sign.

Gradients follow the TTQ paper: the scale ``b`` gets the sum of the weight gradients over its
region (``a`` minus the sum over its own), and the latent weights get the weight gradient
(straight-through) multiplied by their region's scale, by 1 in the zero region. After every
optimizer step the latent weights are clipped to [-1, 1] and the layer re-quantized.

Weights that are exactly 0 when the quantizer is built are pruned ones: they stay 0 (a binary
layer with pruned weights therefore holds ``{-a, 0, +a}``). A layer is stored as a 3-entry
(2 without zeros) codebook with 0.0 as the zero symbol, so the sparse encodings apply.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
from torch import nn

from converters.compress.finetune import gradients_moved
from converters.compress.share import SharedTensor

LowBit = Literal["ternary", "binary"]
DEFAULT_THRESHOLD = 0.05


class LowBitLayer:
    """One ternary or binary parameter: latent weights and learned scales."""

    def __init__(self, param: nn.Parameter, kind: LowBit, threshold: float = DEFAULT_THRESHOLD) -> None:
        if kind not in ("ternary", "binary"):
            raise ValueError(f"kind must be 'ternary' or 'binary', got {kind!r}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
        self.param = param
        self.kind = kind
        self.threshold = threshold
        w = param.detach().float()
        self.kept = w != 0
        if not self.kept.any():
            raise ValueError("cannot quantize a layer whose weights are all zero")
        self.m = float(w.abs().max())
        self.latent = nn.Parameter(w / self.m)
        pos, neg = self._regions()
        latent = self.latent.detach()
        # Start at the mean magnitude of each region: the least-squares fit for binary.
        if kind == "binary":
            a = b = latent[self.kept].abs().mean()
        else:
            a = latent[neg].abs().mean() if neg.any() else latent[pos].mean()
            b = latent[pos].mean() if pos.any() else a
        self.scale_neg = nn.Parameter(a.reshape(1).clone())
        self.scale_pos = nn.Parameter(b.reshape(1).clone())
        self.materialize()

    def _regions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks of the weights quantized to the positive and to the negative scale."""
        latent = self.latent.detach()
        if self.kind == "binary":
            pos = latent >= 0
            return pos & self.kept, ~pos & self.kept
        delta = self.threshold * latent.abs().max()
        return (latent > delta) & self.kept, (latent < -delta) & self.kept

    def parameters(self) -> list[nn.Parameter]:
        """Latent weights and scales (binary shares one scale)."""
        if self.kind == "binary":
            return [self.latent, self.scale_pos]
        return [self.latent, self.scale_neg, self.scale_pos]

    def values(self) -> tuple[float, float]:
        """``(negative value, positive value)`` of the quantized weights."""
        neg = self.scale_pos if self.kind == "binary" else self.scale_neg
        return -self.m * neg.item(), self.m * self.scale_pos.item()

    def quantized(self) -> torch.Tensor:
        """The quantized weight (float32, the parameter's shape)."""
        pos, neg = self._regions()
        low, high = self.values()
        w = torch.zeros_like(self.latent, dtype=torch.float32)
        w[pos] = high
        w[neg] = low
        return w

    def materialize(self) -> None:
        """Write the quantized weights into the layer."""
        with torch.no_grad():
            self.param.copy_(self.quantized())

    def backward(self, weight_grad: torch.Tensor) -> None:
        """Accumulate the TTQ gradients of latent weights and scales from the weight's gradient."""
        g = weight_grad.detach().float() * self.m
        pos, neg = self._regions()
        a = (self.scale_pos if self.kind == "binary" else self.scale_neg).item()
        b = self.scale_pos.item()
        latent_grad = torch.where(pos, b * g, torch.where(neg, a * g, g)) * self.kept
        grads = {self.latent: latent_grad}
        g_pos, g_neg = g[pos].sum().reshape(1), -g[neg].sum().reshape(1)
        if self.kind == "binary":
            grads[self.scale_pos] = g_pos + g_neg
        else:
            grads[self.scale_pos] = g_pos
            grads[self.scale_neg] = g_neg
        for p, grad in grads.items():
            p.grad = grad if p.grad is None else p.grad + grad

    def after_step(self) -> None:
        """Clip the latent weights, keep the scales positive, and re-quantize."""
        with torch.no_grad():
            self.latent.clamp_(-1.0, 1.0).mul_(self.kept)
            self.scale_pos.clamp_(min=1e-6)
            self.scale_neg.clamp_(min=1e-6)
        self.materialize()

    def shared(self) -> SharedTensor:
        """The layer as codes into ``[0, -a, +b]`` (``[-a, +a]`` for a binary layer without zeros)."""
        pos, neg = self._regions()
        low, high = self.values()
        codes = pos.long() * 2 + neg.long()
        zero_symbol = self.kind == "ternary" or not bool(self.kept.all())
        if zero_symbol:
            codebook = np.array([0.0, low, high], dtype=np.float32)
        else:
            codebook = np.array([low, high], dtype=np.float32)
            codes = codes - 1
        return SharedTensor(codebook, codes.cpu().numpy().astype(np.uint8).reshape(-1), zero_symbol)

    def state(self) -> dict[str, torch.Tensor]:
        """Latent weights and scales, for a checkpoint."""
        return {
            "latent": self.latent.detach().clone(),
            "scale_neg": self.scale_neg.detach().clone(),
            "scale_pos": self.scale_pos.detach().clone(),
            "m": torch.tensor(self.m),
            "kept": self.kept.clone(),
        }

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore :meth:`state` and re-quantize."""
        with torch.no_grad():
            self.latent.copy_(state["latent"])
            self.scale_neg.copy_(state["scale_neg"])
            self.scale_pos.copy_(state["scale_pos"])
        self.m = float(state["m"])
        self.kept = state["kept"].to(self.latent.device)
        self.materialize()


class LowBitQuantizer:
    """Ternary or binary quantization of several parameters of a model, trained end to end."""

    def __init__(
        self,
        model: nn.Module,
        names: Mapping[str, LowBit] | list[str],
        kind: LowBit = "ternary",
        threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        kinds = dict(names) if isinstance(names, Mapping) else dict.fromkeys(names, kind)
        params = dict(model.named_parameters())
        missing = sorted(set(kinds) - set(params))
        if missing:
            raise ValueError(f"cannot quantize {', '.join(missing)}: not parameters of the model")
        self.layers = {name: LowBitLayer(params[name], k, threshold) for name, k in kinds.items()}

    def parameters(self) -> list[nn.Parameter]:
        """Latent weights and scales of every layer, to hand to an optimizer."""
        return [p for layer in self.layers.values() for p in layer.parameters()]

    def materialize(self) -> None:
        """Write every layer's quantized weights."""
        for layer in self.layers.values():
            layer.materialize()

    def shared(self) -> dict[str, SharedTensor]:
        """Every layer's codebook and codes."""
        return {name: layer.shared() for name, layer in self.layers.items()}

    def state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Every layer's latent weights and scales."""
        return {name: layer.state() for name, layer in self.layers.items()}

    def load_state(self, state: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Restore :meth:`state`."""
        for name, layer in self.layers.items():
            layer.load_state(state[name])

    @contextmanager
    def enforce(self) -> Iterator[None]:
        """Train through the latent weights and scales in this block.

        After backward each layer's weight gradient is turned into the latent and scale
        gradients (the weight's own ``.grad`` is cleared, so an optimizer skips it); after every
        optimizer step the layers are re-quantized.
        """

        def after_step() -> None:
            for layer in self.layers.values():
                layer.after_step()

        with gradients_moved(self.layers.values(), LowBitLayer.backward, after_step):
            yield
