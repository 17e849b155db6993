"""The CLI, ``convert``, ``save_module`` and ``compress_state_dict`` share one per-tensor path:
with the same settings they store the same tensors, byte for byte."""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

import dcformat
from converters import SAFE, apply_options, compress_state_dict, convert, save_module
from converters.cli import convert_main


def stored(path) -> dict[str, tuple]:
    """Each tensor's header info and decoded bytes."""
    with dcformat.safe_open(path) as f:
        return {name: (f.info(name), f.get_tensor(name).tobytes()) for name in f.keys()}


def state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    pruned = torch.randn(96, 64, generator=g)
    pruned[pruned.abs() < 1.2] = 0
    return {
        "conv.weight": torch.randn(16, 8, 3, 3, generator=g),
        "fc.weight": torch.randn(128, 64, generator=g),
        "fc.bias": torch.randn(128, generator=g),
        "pruned.weight": pruned,
        "emb.weight": torch.randn(64, 96, generator=g).to(torch.bfloat16),
        "ids": torch.arange(2048).reshape(32, 64),
    }


def test_cli_convert_and_compress_state_dict_store_the_same_tensors(tmp_path) -> None:
    tensors = state()
    save_file(tensors, tmp_path / "m.safetensors")
    config = apply_options(SAFE, [("bits", "6"), ("prune", "pruned*=0.5")])
    assert convert_main([str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "cli.dcnn"), "-q",
                         "--bits", "6", "--prune", "pruned*=0.5"]) == 0  # fmt: skip
    convert(tmp_path / "m.safetensors", tmp_path / "api.dcnn", config)
    compress_state_dict(tensors, config).save(tmp_path / "state.dcnn")
    cli = stored(tmp_path / "cli.dcnn")
    assert cli == stored(tmp_path / "api.dcnn") == stored(tmp_path / "state.dcnn")
    encodings = {name: info.encoding for name, (info, _) in cli.items()}
    assert encodings["fc.weight"] == "DENSE_CODES" and encodings["ids"] == "RAW"
    assert encodings["pruned.weight"] == "SPARSE_CODES"


def test_save_module_matches_compress_state_dict_of_its_state(tmp_path) -> None:
    net = nn.Sequential(nn.Conv2d(8, 16, 3), nn.Flatten(), nn.Linear(64, 128))
    save_module(net, tmp_path / "module.dcnn")
    compress_state_dict(net.state_dict()).save(tmp_path / "state.dcnn")
    module, plain = stored(tmp_path / "module.dcnn"), stored(tmp_path / "state.dcnn")
    assert module == plain
    assert module["2.bias"][0].encoding == "RAW_NARROW"  # stored as float16
    assert np.frombuffer(module["2.bias"][1], np.float32).tolist() == net[2].bias.half().float().tolist()
