"""Compression configuration: global defaults plus per-tensor rules matched by name pattern,
the presets (SAFE, PAPER), and settings from the command line and TOML files.

SAFE is the default everywhere: quality-safe for models compressed without retraining,
8-bit weight sharing with density-based centroids, no pruning. PAPER is the paper's
(8-bit conv, 5-bit fully connected, linear centroids), meant to be followed by retraining.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from ..errors import ConvertError
from ..weight import EXACT_ROLES, Layer

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

Init = Literal["linear", "density", "random"]
INITS: tuple[Init, ...] = ("linear", "density", "random")
# how a graph of several outputs is measured against --max-output-error (see CompressionConfig)
OUTPUT_ERRORS = ("concat", "per-output")
EXTRAS = ("scales", "outliers", "float16")  # the format 1.1 and 1.3 features the chooser may use


def _check_bits(bits: int, where: str) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"{where}: bits must be an integer in 1..16, got {bits!r}")


def _check_sparsity(sparsity: float, where: str) -> None:
    if isinstance(sparsity, bool) or not isinstance(sparsity, int | float):
        raise ValueError(f"{where}: sparsity must be a number, got {sparsity!r}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"{where}: sparsity must be in [0, 1), got {sparsity!r}")


def _check_quality(quality: float, where: str) -> None:
    if isinstance(quality, bool) or not isinstance(quality, int | float) or not quality > 0:
        raise ValueError(f"{where}: quality must be a positive number, got {quality!r}")


def _check_init(init: str, where: str) -> None:
    if init not in INITS:
        raise ValueError(f"{where}: init must be one of {', '.join(INITS)}, got {init!r}")


@dataclass(frozen=True)
class LayerRule:
    """Settings for the tensors whose name, or owning module name, matches ``pattern`` (fnmatch).

    ``sparsity`` (fraction of weights removed) and ``quality`` (threshold = quality x std of the
    layer's weights) are the two ways to set pruning; a rule may set at most one of them.
    ``compress=False`` stores matched tensors exactly; ``compress=True`` compresses matched
    floating tensors even when the default selection would skip them.
    """

    pattern: str
    bits: int | None = None
    sparsity: float | None = None
    quality: float | None = None
    init: Init | None = None
    compress: bool | None = None

    def __post_init__(self) -> None:
        where = f"rule {self.pattern!r}"
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ValueError(f"rule pattern must be a non-empty string, got {self.pattern!r}")
        if self.bits is not None:
            _check_bits(self.bits, where)
        if self.sparsity is not None:
            _check_sparsity(self.sparsity, where)
        if self.quality is not None:
            _check_quality(self.quality, where)
        if self.sparsity is not None and self.quality is not None:
            raise ValueError(f"{where}: set either sparsity or quality, not both")
        if self.init is not None:
            _check_init(self.init, where)
        if self.compress is not None and not isinstance(self.compress, bool):
            raise ValueError(f"{where}: compress must be true or false, got {self.compress!r}")

    def matches(self, name: str) -> bool:
        """Whether the rule applies to tensor ``name`` (e.g. ``fc1.weight`` matches ``fc1``)."""
        module = name.rpartition(".")[0]
        return fnmatchcase(name, self.pattern) or (bool(module) and fnmatchcase(module, self.pattern))


@dataclass(frozen=True)
class TensorPlan:
    """What the pipeline does to one compressed tensor, after all rules are applied."""

    name: str
    layer: Layer
    bits: int
    init: Init
    sparsity: float | None = None
    quality: float | None = None
    snr: float | None = None  # the error-bounded chooser's floor in dB; None: ``bits`` as they are

    @property
    def prunes(self) -> bool:
        """Whether this tensor is pruned before quantization."""
        return bool(self.sparsity) or self.quality is not None


@dataclass(frozen=True)
class CompressionConfig:
    """Global defaults and per-tensor rules; later rules override earlier ones field by field.

    By default every floating tensor of rank >= 2 with at least ``min_size`` elements is
    compressed: rank >= 3 (convolutions) with ``conv_bits``, rank 2 (fully connected) with
    ``fc_bits``. Without a rule nothing is pruned. ``prune_steps`` is the number of
    prune-then-retrain rounds when retraining is available (the target is reached at the last).
    ``max_output_error``, with calibration data, is the mean ||y - y0|| / ||y0|| over the
    calibration items that the per-tensor bits are searched to stay within; ``output_error``
    says what y is for a graph of several outputs: "concat" (all outputs flattened and
    concatenated) or "per-output" (each output's mean relative error, the largest of them).
    ``error_feedback`` (torch modules with calibration data and a target) also offers the
    search codes found by GPTQ-style error feedback (``converters.compress.gptq``); off by
    default: measured on items they were not fitted to, they have not bought bytes yet
    (MobileNetV2 from 8 images, MiniLM from 64 sentences).

    ``snr`` (dB) turns on the error-bounded chooser (``converters.compress.fidelity``): each
    compressed tensor gets the fewest bytes (bits, centroids) that keep its fidelity at or
    above its floor, or is stored exactly; a rule that sets a tensor's bits takes it out of
    the chooser. Floors are ``snr`` for a tensor of the model's mean size, lower for larger
    tensors and higher for smaller, within ``snr_spread`` dB (0: ``snr`` for all). ``extras``
    are the file features the chooser may use: "scales" (a float16 scale per row, float32
    tensors) and "outliers" (the largest |w| stored exactly), format 1.1, where they make a
    tensor's file smaller at the fidelity its plain coding measured; and "float16" (format
    1.3): a float32 or float64 tensor it would store exactly (biases, norms, small tensors,
    those no coding suits) is stored as float16 instead where every element keeps float16's
    11 significant bits (zero, or a normal float16), unless it is a quantization scale, zero
    point, or the float bias of an operator that computes in integers (its activations are
    requantized as it runs, so that a change of 2^-11 can move them whole steps).
    """

    conv_bits: int = 8
    fc_bits: int = 5
    init: Init = "linear"
    min_size: int = 1024
    prune_steps: int = 1
    kmeans_iters: int = 300
    seed: int = 0
    max_output_error: float | None = None
    output_error: str = "concat"
    error_feedback: bool = False
    snr: float | None = None
    snr_spread: float = 10.0
    extras: tuple[str, ...] = EXTRAS
    rules: tuple[LayerRule, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _check_bits(self.conv_bits, "conv_bits")
        _check_bits(self.fc_bits, "fc_bits")
        _check_init(self.init, "init")
        for key in ("min_size", "prune_steps", "kmeans_iters", "seed"):
            value = getattr(self, key)
            low = 0 if key in ("min_size", "seed") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")
        target = self.max_output_error
        if target is not None and (
            isinstance(target, bool) or not isinstance(target, int | float) or not target > 0
        ):
            raise ValueError(f"max_output_error must be a positive number, got {target!r}")
        if self.output_error not in OUTPUT_ERRORS:
            raise ValueError(
                f"output_error must be one of {', '.join(OUTPUT_ERRORS)}, got {self.output_error!r}"
            )
        if not isinstance(self.error_feedback, bool):
            raise ValueError(f"error_feedback must be true or false, got {self.error_feedback!r}")
        if self.snr is not None and (
            isinstance(self.snr, bool) or not isinstance(self.snr, int | float) or not 0 < self.snr < 200
        ):
            raise ValueError(f"snr must be a number of dB in (0, 200), got {self.snr!r}")
        spread = self.snr_spread
        if isinstance(spread, bool) or not isinstance(spread, int | float) or not 0 <= spread <= 60:
            raise ValueError(f"snr_spread must be a number of dB in [0, 60], got {spread!r}")
        if isinstance(self.extras, str):
            raise ValueError(f"extras must be a list of {', '.join(EXTRAS)}, not a string")
        unknown = [extra for extra in self.extras if extra not in EXTRAS]
        if unknown:
            raise ValueError(f"unknown extras {unknown}; choose from {', '.join(EXTRAS)} (or none)")
        object.__setattr__(self, "extras", tuple(dict.fromkeys(self.extras)))
        if not all(isinstance(rule, LayerRule) for rule in self.rules):
            raise ValueError("rules must be LayerRule instances")
        object.__setattr__(self, "rules", tuple(self.rules))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompressionConfig:
        """Build a config from plain data (e.g. parsed TOML).

        ``rules`` is either a list of tables with a ``pattern`` key or a table keyed by pattern.
        Unknown keys raise ValueError.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"config must be a mapping, got {type(data).__name__}")
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(
                f"unknown config key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
            )
        values = dict(data)
        values["rules"] = tuple(_parse_rules(values.get("rules", ())))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, accepted back by :meth:`from_dict` (unset optional fields left out)."""
        out: dict[str, Any] = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name != "rules" and getattr(self, f.name) is not None
        }
        if self.snr is None:  # configs without the chooser record as before
            del out["snr_spread"], out["extras"]
        else:
            out["extras"] = list(self.extras)
        if not self.error_feedback:  # ... and without error feedback
            del out["error_feedback"]
        out["rules"] = [
            {f.name: getattr(r, f.name) for f in fields(r) if getattr(r, f.name) is not None}
            for r in self.rules
        ]
        return out

    def plan(
        self, name: str, shape: Sequence[int], dtype: np.dtype | str, role: str | None = None
    ) -> TensorPlan | None:
        """The plan for one tensor, or None when it is stored exactly.

        ``role`` is what the model says the tensor is (see ``converters.weight.Role``): biases,
        norms, quantization scales and zero points are stored exactly unless a rule includes them.
        """
        matched = [rule for rule in self.rules if rule.matches(name)]
        floating = np.dtype(dtype).kind == "f"
        size = int(np.prod(shape, dtype=np.int64))
        compress = floating and len(shape) >= 2 and size >= self.min_size and role not in EXACT_ROLES
        for rule in matched:
            if rule.compress is not None:
                compress = rule.compress
        if not compress:
            return None
        if not floating:
            raise ValueError(f"a rule forces compression of {name!r}, which is not floating point")
        layer: Layer = "conv" if len(shape) >= 3 else "fc"
        bits = self.conv_bits if layer == "conv" else self.fc_bits
        plan = TensorPlan(name, layer, bits, self.init, snr=self.snr)
        for rule in matched:
            if rule.bits is not None:
                plan = replace(plan, bits=rule.bits, snr=None)
            if rule.init is not None:
                plan = replace(plan, init=rule.init)
            if rule.sparsity is not None:
                plan = replace(plan, sparsity=rule.sparsity, quality=None)
            if rule.quality is not None:
                plan = replace(plan, quality=rule.quality, sparsity=None)
        return plan


def _parse_rules(raw: Any) -> list[LayerRule]:
    if isinstance(raw, Mapping):
        items = []
        for pattern, body in raw.items():
            if not isinstance(body, Mapping):
                raise ValueError(f"rule {pattern!r} must be a table, got {type(body).__name__}")
            if "pattern" in body:
                raise ValueError(f"rule {pattern!r}: the pattern is the key; remove 'pattern'")
            items.append({"pattern": pattern, **body})
    elif isinstance(raw, Sequence) and not isinstance(raw, str):
        items = list(raw)
    else:
        raise ValueError("rules must be a list of tables or a table keyed by pattern")
    allowed = {f.name for f in fields(LayerRule)}
    rules = []
    for item in items:
        if not isinstance(item, Mapping):
            raise ValueError(f"each rule must be a table, got {type(item).__name__}")
        unknown = sorted(set(item) - allowed)
        if unknown:
            raise ValueError(
                f"rule {item.get('pattern')!r}: unknown key(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )
        if "pattern" not in item:
            raise ValueError("each rule needs a 'pattern'")
        rules.append(LayerRule(**cast(dict[str, Any], item)))
    return rules


DEFAULT_SNR_DB = 36.0  # the lowest floor (2 dB steps) meeting every zoo target (benchmarks/zoo.py)
SAFE = CompressionConfig(conv_bits=8, fc_bits=8, init="density", snr=DEFAULT_SNR_DB)
PAPER = CompressionConfig()


def load_config(path: str | Path) -> CompressionConfig:
    """A config from a TOML file: the fields of CompressionConfig, rules as tables."""
    from ..formats.base import check_input

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
    ``include``/``exclude`` a PATTERN to compress or store exactly;
    ``max-output-error`` "E", the output-error target of a calibrated conversion;
    ``output-error`` "concat" or "per-output", how a graph's several outputs are measured;
    ``error-feedback`` "on" or "off" (see :class:`CompressionConfig`);
    ``snr`` "DB", the error-bounded chooser's floor (0 or "off": no chooser);
    ``extras`` "scales,outliers,float16" (a comma list, or "none"), what the chooser may use. ``bits`` N for
    every tensor, or ``init``, turn the chooser off: the bits given are used.
    """
    config, rules = base, list(base.rules)
    try:
        if init is not None:
            config = replace(config, init=init, snr=None)
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
                    config = replace(config, conv_bits=bits, fc_bits=bits, snr=None)
            elif option == "snr":
                if text.lower() in ("0", "off", "none"):
                    config = replace(config, snr=None)
                else:
                    try:
                        config = replace(config, snr=float(text))
                    except ValueError:
                        raise ConvertError(
                            f"--snr {text}: expected a number of dB in (0, 200), or 'off'", rule="usage"
                        ) from None
            elif option == "extras":
                words = [] if text.strip().lower() == "none" else [w.strip() for w in text.split(",")]
                config = replace(config, extras=tuple(words))
            elif option == "max-output-error":
                config = replace(config, max_output_error=_number(float, value, text))
            elif option == "output-error":
                config = replace(config, output_error=text)
            elif option == "error-feedback":
                if text.lower() not in ("on", "off"):
                    raise ConvertError(f"error-feedback {text}: expected 'on' or 'off'", rule="usage")
                config = replace(config, error_feedback=text.lower() == "on")
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
