"""Deep Compression's stages: pruning, k-means weight sharing, trained quantization, and the
cheapest encoding of each tensor.

``tensor`` is the one data-free path of a tensor; ``model`` runs whole models through it,
with retraining between stages when asked. Names are imported on first use, so the
data-free parts load without torch.
"""

from converters.lazy import lazy_attributes

_MODULE_OF = {
    "PAPER": "config",
    "SAFE": "config",
    "CompressedTensor": "tensor",
    "CompressionConfig": "config",
    "CompressionReport": "report",
    "CompressionResult": "model",
    "KMeansResult": "kmeans",
    "LayerRule": "config",
    "LowBitLayer": "ternary",
    "LowBitQuantizer": "ternary",
    "Stage": "retrain",
    "TrainLoop": "retrain",
    "LossFn": "retrain",
    "Pruner": "prune",
    "Retrain": "retrain",
    "RetrainStage": "retrain",
    "Sensitivities": "sensitivity",
    "SharedTensor": "share",
    "TensorPlan": "config",
    "TensorReport": "report",
    "TensorSensitivity": "sensitivity",
    "TrainedQuantizer": "finetune",
    "apply_options": "config",
    "classification_loss": "retrain",
    "compress_model": "model",
    "compress_state_dict": "model",
    "compress_weight": "tensor",
    "deep_compress": "recipe",
    "distillation_loss": "retrain",
    "init_centroids": "kmeans",
    "kmeans_1d": "kmeans",
    "load_config": "config",
    "measure_sensitivity": "sensitivity",
    "prune_array": "prune",
    "quality_threshold": "prune",
    "share_weights": "share",
    "sparsity_mask": "prune",
    "train_loop": "retrain",
}


__getattr__ = lazy_attributes(__name__, _MODULE_OF)

__all__ = sorted(_MODULE_OF)
