"""The converters' error: a DcnnError, so callers catch one hierarchy for the core and converters."""

from __future__ import annotations

from dcformat import DcnnError


class ConvertError(DcnnError):
    """A model cannot be converted: unreadable input, unsupported content or bad settings.

    ``rule`` is "usage" for bad arguments (the CLI exits 2 for those) and "convert" otherwise.
    """

    rule = "convert"
