"""PyTorch in and out: state_dict checkpoints (.pt/.pth), live modules, and .pt output."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from dcformat import DcnnFile, Source, replacing, safe_open

from ..errors import ConvertError
from ..weight import Layer, Role, Weight, from_torch
from .base import TIES, Format, ModelInput, check_input, ties_of, with_ties

CHECKPOINT_KEYS = ("state_dict", "model")


def read_checkpoint(path: Path, **_: Any) -> ModelInput:
    """Open a torch checkpoint: a state_dict, or a dict holding one under a common key.

    Loaded with ``weights_only=True``: no pickled code runs. Zip checkpoints are memory-mapped.
    Tied tensors (names that share one tensor's data, like tied embeddings) are read once;
    the source's ``ties`` attribute names the aliases, and .pt output ties them again.
    """
    state, key = load_state(path)
    attributes = {"checkpoint_key": key} if key else {}
    return _state_input(state, {}, Source("pytorch", b"", attributes), str(path))


def load_state(path: Path) -> tuple[Mapping[str, Any], str]:
    """A checkpoint's state_dict (memory-mapped when it can be) and the key it was under."""
    import torch

    check_input(path)
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # a legacy (non-zip) checkpoint cannot be mapped
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for unreadable or unsafe pickles
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConvertError(f"cannot load as a PyTorch checkpoint: {reason}", path=str(path)) from None
    state, key = _state_dict(obj)
    if state is None:
        raise ConvertError(
            "no state_dict found: expected a dict of tensors, or one under "
            + " or ".join(repr(k) for k in CHECKPOINT_KEYS),
            path=str(path),
        )
    return state, key


def read_module(module: Any) -> ModelInput:
    """A live ``torch.nn.Module``: its state_dict, roles and conv/fc told from the module types."""
    uses = module_uses(module)  # checks that it is a module
    return _state_input(module.state_dict(), uses, Source("pytorch"), None)


def module_uses(module: Any) -> dict[str, tuple[Role, Layer | None]]:
    """Role and conv/fc of the tensors of a ``torch.nn.Module``'s known layer types."""
    from torch import nn

    if not isinstance(module, nn.Module):
        raise ConvertError(f"expected a torch.nn.Module, got {type(module).__name__}", rule="usage")
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    norm = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
    norm += (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
    uses: dict[str, tuple[Role, Layer | None]] = {}
    for prefix, sub in module.named_modules():
        for name, tensor in [*sub.named_parameters(recurse=False), *sub.named_buffers(recurse=False)]:
            if tensor is None:
                continue
            key = f"{prefix}.{name}" if prefix else name
            if isinstance(sub, norm):
                uses[key] = ("norm", None)
            elif name.startswith("bias"):
                uses[key] = ("bias", None)
            elif isinstance(sub, conv) and name == "weight":
                uses[key] = ("weight", "conv")
            elif isinstance(sub, (nn.Embedding, nn.EmbeddingBag)) and name == "weight":
                uses[key] = ("embedding", "fc")
            elif isinstance(sub, (nn.Linear, nn.Bilinear, nn.RNNBase)) and name.startswith("weight"):
                uses[key] = ("weight", "fc")
    return uses


def _state_dict(obj: Any) -> tuple[Mapping[str, Any] | None, str]:
    import torch

    def is_state(value: Any) -> bool:
        return isinstance(value, Mapping) and all(isinstance(v, torch.Tensor) for v in value.values())

    if isinstance(obj, Mapping) and obj and is_state(obj):
        return obj, ""
    for key in CHECKPOINT_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            if not is_state(obj[key]):
                bad = next(k for k, v in obj[key].items() if not isinstance(v, torch.Tensor))
                raise ConvertError(f"entry {bad!r} of {key!r} is not a tensor")
            return obj[key], key
    return None, ""


def tied_names(state: Mapping[str, Any]) -> dict[str, tuple[str, int]]:
    """Names whose tensor is exactly an earlier name's (the same storage, offset, shape, strides
    and dtype: tied weights): each alias, that earlier name, and the alias's position."""
    import torch

    first: dict[tuple[Any, ...], str] = {}
    ties: dict[str, tuple[str, int]] = {}
    for index, (name, t) in enumerate(state.items()):
        if t.layout != torch.strided or t.numel() == 0 or t.device.type == "meta":
            continue  # sparse tensors are refused later; empty and meta ones hold no data
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if key in first:
            ties[name] = (first[key], index)
        else:
            first[key] = name
    return ties


def _state_input(
    state: Mapping[str, Any], uses: Mapping[str, tuple[Role, Layer | None]], source: Source, path: str | None
) -> ModelInput:
    for name in state:
        if not isinstance(name, str) or not name:
            raise ConvertError(f"state_dict key {name!r} is not a tensor name", path=path)
    ties = tied_names(state)
    if ties:
        attributes = {**source.attributes, TIES: json.dumps({a: list(t) for a, t in ties.items()})}
        source = Source(source.format, source.skeleton, attributes)

    def weights() -> Iterator[Weight]:
        for name, tensor in state.items():
            if name in ties:
                continue
            try:
                weight = from_torch(name, tensor)
            except ConvertError as exc:
                raise exc.located(path=path) from None
            role, layer = uses.get(name, (None, None))
            yield replace(weight, layer=layer, role=role)

    nbytes = sum(t.numel() * t.element_size() for name, t in state.items() if name not in ties)
    return ModelInput(weights, nbytes, {}, source)


def write_checkpoint(src: Path, path: Path, options: Mapping[str, Any]) -> None:
    """Write every tensor of a .dcnn file as a state_dict (atomically)."""
    with safe_open(src, framework="torch") as dcnn:
        write_state(dcnn, path)


def write_state(dcnn: DcnnFile, path: Path, names: Sequence[str] | None = None) -> None:
    """Write the tensors ``names`` (default: all, tied aliases included) of a .dcnn file (opened
    with framework="torch") as a state_dict, atomically; tied aliases share their tensor."""
    import torch

    ties = ties_of(dcnn)
    targets = {alias: target for alias, (target, _) in ties.items()}
    tensors: dict[str, Any] = {}

    def tensor(name: str) -> Any:
        target = targets.get(name, name)
        if target not in tensors:
            tensors[target] = dcnn.get_tensor(target)
        return tensors[target]

    state = {name: tensor(name) for name in (with_ties(dcnn.keys(), ties) if names is None else names)}
    with replacing(path) as tmp:
        torch.save(state, tmp)


FORMAT = Format("pytorch", (".pt", ".pth"), read=read_checkpoint, write=write_checkpoint)
