"""Compression settings from the command line and TOML files, on top of a base config.

The command line's default is quality-safe for models compressed without retraining:
8-bit weight sharing everywhere with density-based centroids, no pruning. ``--paper``
starts from the paper's defaults instead (8-bit conv, 5-bit fully connected, linear
centroids), which are meant to be followed by retraining.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from .errors import ConvertError
from .model_io import check_input
from .pipeline.config import CompressionConfig, LayerRule

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SAFE = CompressionConfig(conv_bits=8, fc_bits=8, init="density")
PAPER = CompressionConfig()


def load_config(path: str | Path) -> CompressionConfig:
    """A config from a TOML file: the fields of CompressionConfig, rules as tables."""
    path = Path(path)
    check_input(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConvertError(f"not a valid TOML file: {exc}", rule="usage", path=str(path)) from None
    try:
        return CompressionConfig.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise ConvertError(f"bad config: {exc}", rule="usage", path=str(path)) from None


def apply_options(
    base: CompressionConfig,
    options: Iterable[tuple[str, str]] = (),
    *,
    init: str | None = None,
    min_size: int | None = None,
) -> CompressionConfig:
    """``base`` with command-line settings applied, in order, after its own rules.

    ``options`` are (option, text) pairs: ``bits`` "N" (the default of every tensor) or
    "PATTERN=N" (a rule, which beats the default);
    ``prune`` "F" or "PATTERN=F", F the fraction of weights removed (0.9 or 90%);
    ``include``/``exclude`` a PATTERN to compress or store exactly.
    """
    config, rules = base, list(base.rules)
    try:
        if init is not None:
            config = replace(config, init=init)
        if min_size is not None:
            config = replace(config, min_size=min_size)
        for option, text in options:
            if option in ("include", "exclude"):
                rules.append(LayerRule(text, compress=option == "include"))
                continue
            pattern, _, value = text.rpartition("=")
            if option == "bits":
                bits = _number(int, value, text)
                if pattern:
                    rules.append(LayerRule(pattern, bits=bits))
                else:
                    config = replace(config, conv_bits=bits, fc_bits=bits)
            elif option == "prune":
                percent = value.endswith("%")
                sparsity = _number(float, value[:-1] if percent else value, text) / (100 if percent else 1)
                rules.append(LayerRule(pattern or "*", sparsity=sparsity))
            else:
                raise ConvertError(f"unknown option {option!r}", rule="usage")
        return replace(config, rules=tuple(rules))
    except ValueError as exc:
        raise ConvertError(str(exc), rule="usage") from None


def _number(kind: type, value: str, text: str) -> int | float:
    try:
        return kind(value)
    except ValueError:
        raise ConvertError(f"cannot read {text!r}: expected PATTERN=NUMBER or NUMBER", rule="usage") from None
