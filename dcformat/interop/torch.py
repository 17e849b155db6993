"""torch interop: fill a module's parameters and buffers from a .dcnn file in place
(:func:`load_into`), and the reader's torch tensors (framework="torch").

torch is imported when a function here is called, not when this module is.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, NamedTuple

import numpy as np

from .. import dtypes
from ..errors import DcnnError
from ..file.reader import safe_open

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
    dcformat.interop.compressed); the other tensors load as above.
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


def to_tensor(array: np.ndarray, kind: str, device: str | None) -> Any:
    """A torch tensor sharing the stored-form array (bfloat16 given as its bits), on ``device``."""
    import torch

    tensor = torch.from_numpy(array.view(np.int16) if kind == "bfloat16" else array)
    if kind == "bfloat16":
        tensor = tensor.view(torch.bfloat16)
    if device is None:
        return tensor
    try:
        return tensor.to(device)
    except (RuntimeError, AssertionError, TypeError) as exc:  # torch's errors for unusable devices
        raise DcnnError(f"cannot place the tensor on device {device!r}: {exc}", rule="usage") from None


def sparse_matrix(
    row: np.ndarray, col: np.ndarray, stored: np.ndarray, kind: str, shape: tuple[int, int], layout: str
) -> Any:
    """A torch sparse COO or CSR matrix of stored-form values at sorted (row, col)."""
    import torch

    index = torch.from_numpy(np.stack([row, col]))
    coo = torch.sparse_coo_tensor(
        index, to_tensor(stored, kind, None), shape, is_coalesced=True, check_invariants=False
    )
    if layout == "coo":
        return coo
    with warnings.catch_warnings():  # torch flags its CSR support as beta
        warnings.simplefilter("ignore", UserWarning)
        return coo.to_sparse_csr()
