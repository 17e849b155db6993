"""Model formats in and out of .dcnn: one module each, found by the registry below.

A module (or package) here that defines ``FORMAT`` (a :class:`~converters.formats.base.Format`)
is a format: adding one takes nothing else.
"""

from __future__ import annotations

import pkgutil
from functools import cache
from importlib import import_module

from .base import Format, ModelInput, check_input

__all__ = ["Format", "ModelInput", "by_suffix", "check_input", "formats"]


@cache
def formats() -> tuple[Format, ...]:
    """Every format, in module-name order."""
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = import_module(f"{__name__}.{info.name}")
        if isinstance(getattr(module, "FORMAT", None), Format):
            found.append(module.FORMAT)
    return tuple(found)


def by_suffix(suffix: str) -> Format | None:
    """The format owning a file suffix (".onnx"), case-insensitive."""
    suffix = suffix.lower()
    return next((f for f in formats() if suffix in f.suffixes), None)
