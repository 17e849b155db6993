"""Fill a torch module's parameters and buffers from a .dcnn file, in place.

torch is imported when :func:`load_into` is called, not when this module is.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from . import dtypes
from .errors import DcnnError
from .reader import safe_open

_TORCH_FLOATS = {"float32", "float16", "bfloat16", "float64"}


class LoadResult(NamedTuple):
    """Keys of the module missing from the file, and keys of the file the module lacks."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def load_into(
    module: Any,
    path: str | os.PathLike[str],
    strict: bool = True,
    *,
    threads: int = 1,
    verify: bool = True,
    compressed: bool = False,
) -> LoadResult:
    """Copy every tensor of the file into the module entry of the same name, like
    ``module.load_state_dict``: the parameter and buffer objects are kept and filled in place,
    on their device and in their dtype (float tensors decode straight to it).

    ``strict`` raises a DcnnError naming the missing and unexpected keys; shapes must always
    match. Both are checked before anything is copied; a corrupt tensor found while decoding
    raises with the tensors before it already copied.

    ``compressed`` replaces the linear and 1x1 convolution layers whose weight is stored coded
    by modules that compute on the compressed form, where that is predicted faster (see
    dcformat.compressed); the other tensors load as above.
    """
    import torch

    if not isinstance(module, torch.nn.Module):
        raise DcnnError(f"expected a torch.nn.Module, not {type(module).__name__}", rule="usage")
    targets = module.state_dict(keep_vars=True)
    with safe_open(path, framework="torch", verify=verify, threads=threads) as f:
        names = f.keys()
        known = set(names)
        missing = [key for key in targets if key not in known]
        unexpected = [name for name in names if name not in targets]
        if strict and (missing or unexpected):
            raise DcnnError(
                f"the file does not match the module: missing keys {missing}, unexpected keys {unexpected}",
                rule="usage",
                path=f.path,
            )
        shared = [name for name in names if name in targets]
        for name in shared:
            shape = tuple(targets[name].shape)
            if f.info(name).shape != shape:
                raise DcnnError(
                    f"shape {list(f.info(name).shape)} in the file, {list(shape)} in the module",
                    rule="usage",
                    path=f.path,
                    tensor=name,
                )
        if compressed:
            from .compressed import replace_coded

            done = replace_coded(module, f, shared)
            shared = [name for name in shared if name not in done]
        for name in shared:
            target = targets[name]
            wanted = str(target.dtype).removeprefix("torch.")
            floats = f.info(name).dtype in dtypes.FLOAT_NAMES and wanted in _TORCH_FLOATS
            value = f.get_tensor(name, dtype=wanted if floats else None)
            with torch.no_grad():
                target.copy_(value)
    return LoadResult(missing, unexpected)
