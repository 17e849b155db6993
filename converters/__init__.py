"""Converters between framework checkpoints and .dcnn files, and the compression pipeline."""
