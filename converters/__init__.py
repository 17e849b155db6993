"""Converters between framework checkpoints and .dcnn files, and the compression pipeline.

The package-level API (imported on first use: ``import converters`` loads no torch)::

    converters.convert(src, dst, config=SAFE)           # files, by extension
    converters.compress_state_dict(state, config=SAFE)  # arrays or tensors -> result.save(path)
    converters.save_module(module, path, config=SAFE)   # a live torch.nn.Module
    converters.apply_options(config, [("bits", "6"), ("prune", "fc*=0.9")])  # the CLI's flags
    converters.deep_compress(model, train, evaluate, config)  # prune, retrain, share, fine-tune
"""

from converters.lazy import lazy_attributes

_MODULE_OF = {
    "PAPER": "compress.config",
    "SAFE": "compress.config",
    "CompressionConfig": "compress.config",
    "CompressionResult": "compress.model",
    "ConversionReport": "conversion",
    "ConvertError": "errors",
    "Stage": "compress.retrain",
    "TrainLoop": "compress.retrain",
    "LayerRule": "compress.config",
    "apply_options": "compress.config",
    "compress_model": "compress.model",
    "compress_state_dict": "compress.model",
    "convert": "conversion",
    "deep_compress": "compress.recipe",
    "distillation_loss": "compress.retrain",
    "load_config": "compress.config",
    "save_module": "conversion",
}


__getattr__ = lazy_attributes(__name__, _MODULE_OF)

__all__ = sorted(_MODULE_OF)
