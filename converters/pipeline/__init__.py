"""Deep Compression pipeline: pruning, trained quantization (weight sharing), Huffman coding."""

from converters.pipeline.compress import CompressionResult, compress_model, compress_state_dict
from converters.pipeline.config import CompressionConfig, LayerRule, TensorPlan
from converters.pipeline.finetune import TrainedQuantizer
from converters.pipeline.kmeans import KMeansResult, init_centroids, kmeans_1d
from converters.pipeline.prune import Pruner, prune_array, quality_threshold, sparsity_mask
from converters.pipeline.quantize import SharedTensor, share_weights
from converters.pipeline.report import CompressionReport, TensorReport
from converters.pipeline.retrain import (
    LoopRetrain,
    LossFn,
    Retrain,
    RetrainStage,
    classification_loss,
    train_loop,
)

__all__ = [
    "CompressionConfig",
    "CompressionReport",
    "CompressionResult",
    "KMeansResult",
    "LayerRule",
    "LoopRetrain",
    "LossFn",
    "Pruner",
    "Retrain",
    "RetrainStage",
    "SharedTensor",
    "TensorPlan",
    "TensorReport",
    "TrainedQuantizer",
    "classification_loss",
    "compress_model",
    "compress_state_dict",
    "init_centroids",
    "kmeans_1d",
    "prune_array",
    "quality_threshold",
    "share_weights",
    "sparsity_mask",
    "train_loop",
]
