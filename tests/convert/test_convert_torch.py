"""PyTorch checkpoints and live modules to .dcnn, and .dcnn to a .pt state_dict."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import dcformat
from converters.compress.config import PAPER
from converters.conversion import convert, save_module
from converters.errors import ConvertError

torch.manual_seed(0)


def state() -> dict[str, torch.Tensor]:
    return {
        "fc.weight": torch.randn(64, 64),
        "fc.bias": torch.randn(64),
        "emb.weight": torch.randn(100, 32).bfloat16(),
        "bn.num_batches_tracked": torch.tensor(7),
    }


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_state_dict_round_trip(tmp_path: Path, wrap: str | None) -> None:
    sd = state()
    src = tmp_path / "model.pt"
    torch.save(sd if wrap is None else {wrap: sd, "epoch": 3, "optimizer": {"lr": 0.1}}, src)
    dcnn, back = tmp_path / "m.dcnn", tmp_path / "back.pth"
    convert(src, dcnn)
    with dcformat.safe_open(dcnn) as f:
        assert f.keys() == list(sd)
        assert f.source().format == "pytorch"
        assert f.source().attributes.get("checkpoint_key", "") == (wrap or "")
    convert(dcnn, back)
    restored = torch.load(back, weights_only=True)
    decoded = dcformat.load_file(dcnn, framework="torch")
    assert list(restored) == list(sd)
    for name, tensor in sd.items():
        assert restored[name].dtype == tensor.dtype and restored[name].shape == tensor.shape
        assert torch.equal(restored[name], decoded[name])
    assert torch.equal(restored["fc.bias"], sd["fc.bias"].half().float())  # stored as float16
    assert torch.equal(restored["bn.num_batches_tracked"], sd["bn.num_batches_tracked"])
    assert not torch.equal(restored["fc.weight"], sd["fc.weight"])  # compressed: 256 values
    assert len(torch.unique(restored["emb.weight"])) <= 256


def test_legacy_checkpoint_format(tmp_path: Path) -> None:
    src = tmp_path / "old.pt"
    torch.save(state(), src, _use_new_zipfile_serialization=False)
    convert(src, tmp_path / "m.dcnn")
    with dcformat.safe_open(tmp_path / "m.dcnn") as f:
        assert f.keys() == list(state())


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {Payload.marker}",))


def test_pickled_code_is_never_run(tmp_path: Path) -> None:
    Payload.marker = tmp_path / "pwned"
    src = tmp_path / "evil.pt"
    torch.save({"fc.weight": torch.randn(4, 4), "x": Payload()}, src)
    with pytest.raises(ConvertError, match="cannot load as a PyTorch checkpoint"):
        convert(src, tmp_path / "m.dcnn")
    assert not Payload.marker.exists()
    assert not (tmp_path / "m.dcnn").exists()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ([1, 2, 3], "no state_dict found"),
        ({}, "no state_dict found"),
        ({"state_dict": {"w": torch.ones(2), "step": 3}}, "'step' of 'state_dict' is not a tensor"),
        ({"w": torch.ones(2, dtype=torch.complex64)}, "unsupported dtype torch"),
        ({"w": torch.ones(2, 2).to_sparse()}, "only dense tensors"),
    ],
)
def test_unsupported_content(tmp_path: Path, content, match: str) -> None:
    src = tmp_path / "bad.pt"
    torch.save(content, src)
    with pytest.raises(ConvertError, match=match):
        convert(src, tmp_path / "m.dcnn")
    assert not (tmp_path / "m.dcnn").exists()


def test_garbage_file(tmp_path: Path) -> None:
    src = tmp_path / "bad.pt"
    src.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ConvertError, match="cannot load"):
        convert(src, tmp_path / "m.dcnn")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3)
        self.bilinear = nn.Bilinear(32, 32, 8)  # rank-3 weight, yet fully connected
        self.fc = nn.Linear(64, 64)
        self.norm = nn.BatchNorm2d(16)


def test_live_module_layers_decide_conv_or_fc(tmp_path: Path) -> None:
    net = Net()
    report = save_module(net, tmp_path / "net.dcnn", PAPER)
    bits = {row.name: row.weight_bits for row in report.tensors if row.encoding != "RAW"}
    assert bits == {"conv.weight": 8, "bilinear.weight": 5, "fc.weight": 5}
    loaded = dcformat.load_file(tmp_path / "net.dcnn", framework="torch")
    assert list(loaded) == list(net.state_dict())
    net.load_state_dict(loaded)  # the decoded tensors fit the module
    assert torch.equal(loaded["norm.running_var"], torch.ones(16))


def test_save_module_refuses_other_objects(tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match="expected a torch") as info:
        save_module({"w": torch.ones(2)}, tmp_path / "x.dcnn")
    assert info.value.rule == "usage"


class TiedLM(nn.Module):
    """An embedding tied to the output layer, as language models tie them."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(300, 64)
        self.norm = nn.LayerNorm(64)
        self.head = nn.Linear(64, 300, bias=False)
        self.head.weight = self.embed.weight


@pytest.mark.parametrize("workers", [1, 2])
def test_tied_tensors_are_stored_once_and_restored_tied(tmp_path: Path, workers: int) -> None:
    model = TiedLM()
    src, dcnn, back = tmp_path / "lm.pt", tmp_path / "lm.dcnn", tmp_path / "back.pt"
    torch.save(model.state_dict(), src)
    convert(src, dcnn, workers=workers)
    with dcformat.safe_open(dcnn) as f:
        assert f.keys() == ["embed.weight", "norm.weight", "norm.bias"]  # head.weight once, as embed.weight
    untied = tmp_path / "untied.dcnn"
    state = {name: t.clone() for name, t in model.state_dict().items()}
    torch.save(state, tmp_path / "untied.pt")
    convert(tmp_path / "untied.pt", untied)
    assert dcnn.stat().st_size < 0.6 * untied.stat().st_size  # the tied pair stored once
    convert(dcnn, back)
    restored = torch.load(back, weights_only=True)
    assert list(restored) == list(model.state_dict())  # the original order
    assert restored["head.weight"].data_ptr() == restored["embed.weight"].data_ptr()  # tied again
    again = TiedLM()
    again.load_state_dict(restored)
    assert again.head.weight is again.embed.weight
    with dcformat.safe_open(dcnn, framework="torch") as f:
        assert torch.equal(restored["head.weight"], f.get_tensor("embed.weight"))


def test_tied_module_saves_once_and_safetensors_output_copies_the_alias(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    model = TiedLM()
    dcnn = tmp_path / "lm.dcnn"
    save_module(model, dcnn)
    with dcformat.safe_open(dcnn) as f:
        assert "head.weight" not in f.keys() and "embed.weight" in f.keys()
    convert(dcnn, tmp_path / "lm.safetensors")
    arrays = load_file(tmp_path / "lm.safetensors")
    assert sorted(arrays) == sorted(model.state_dict())
    np.testing.assert_array_equal(arrays["head.weight"], arrays["embed.weight"])


def test_views_that_differ_are_not_ties(tmp_path: Path) -> None:
    base = torch.randn(64, 64)
    state = {"a": base, "b": base[:32], "c": base.t(), "d": base}  # only "d" is "a" exactly
    src, dcnn, back = tmp_path / "views.pt", tmp_path / "views.dcnn", tmp_path / "back.pt"
    torch.save(state, src)
    convert(src, dcnn)
    with dcformat.safe_open(dcnn) as f:
        assert f.keys() == ["a", "b", "c"]
    convert(dcnn, back)
    restored = torch.load(back, weights_only=True)
    assert list(restored) == ["a", "b", "c", "d"]
    assert restored["d"].data_ptr() == restored["a"].data_ptr()
    assert restored["b"].shape == (32, 64) and restored["c"].shape == (64, 64)


@pytest.mark.parametrize("ties", ['{"x": ["missing", 0]}', "[1, 2]", '{"a": ["a", 0]}', "not json"])
def test_malformed_ties_attribute_is_one_error(tmp_path: Path, ties: str) -> None:
    dcnn = tmp_path / "m.dcnn"
    with dcformat.Writer(dcnn, source=dcformat.Source("pytorch", b"", {"ties": ties})) as writer:
        writer.add("a", np.ones(3, np.float32))
    with pytest.raises(ConvertError, match="ties"):
        convert(dcnn, tmp_path / "back.pt")
    assert not (tmp_path / "back.pt").exists()
