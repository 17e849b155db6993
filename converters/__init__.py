"""Converters between framework checkpoints and .dcnn files, and the compression pipeline.

The retraining API is imported on first use, so ``import converters`` does not import torch.
"""

from importlib import import_module
from typing import Any

_LAZY = {
    "deep_compress": "converters.pipeline.recipe",
    "distillation_loss": "converters.pipeline.recipe",
    "Stage": "converters.pipeline.recipe",
    "TrainLoop": "converters.pipeline.recipe",
    "CompressionConfig": "converters.pipeline.config",
    "LayerRule": "converters.pipeline.config",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


__all__ = sorted(_LAZY)
