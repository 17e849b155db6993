"""Deep Compression pipeline: pruning, trained quantization (weight sharing), Huffman coding.

Names are imported on first use, so the data-free parts (config, k-means, weight sharing)
load without torch.
"""

from importlib import import_module
from typing import Any

_MODULE_OF = {
    "distillation_loss": "recipe",
    "deep_compress": "recipe",
    "TrainLoop": "recipe",
    "Stage": "recipe",
    "LowBitLayer": "ternary",
    "LowBitQuantizer": "ternary",
    "CompressionConfig": "config",
    "CompressionReport": "report",
    "CompressionResult": "compress",
    "KMeansResult": "kmeans",
    "LayerRule": "config",
    "LoopRetrain": "retrain",
    "LossFn": "retrain",
    "Pruner": "prune",
    "Retrain": "retrain",
    "RetrainStage": "retrain",
    "SharedTensor": "quantize",
    "TensorPlan": "config",
    "TensorReport": "report",
    "TrainedQuantizer": "finetune",
    "classification_loss": "retrain",
    "compress_model": "compress",
    "compress_state_dict": "compress",
    "init_centroids": "kmeans",
    "kmeans_1d": "kmeans",
    "prune_array": "prune",
    "quality_threshold": "prune",
    "share_weights": "quantize",
    "sparsity_mask": "prune",
    "train_loop": "retrain",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value


__all__ = [
    "CompressionConfig",
    "CompressionReport",
    "CompressionResult",
    "KMeansResult",
    "LayerRule",
    "LoopRetrain",
    "LossFn",
    "LowBitLayer",
    "LowBitQuantizer",
    "Pruner",
    "Retrain",
    "RetrainStage",
    "SharedTensor",
    "Stage",
    "TensorPlan",
    "TensorReport",
    "TrainLoop",
    "TrainedQuantizer",
    "classification_loss",
    "compress_model",
    "compress_state_dict",
    "deep_compress",
    "distillation_loss",
    "init_centroids",
    "kmeans_1d",
    "prune_array",
    "quality_threshold",
    "share_weights",
    "sparsity_mask",
    "train_loop",
]
