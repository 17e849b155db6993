"""dcformat.interop.torch.load_into: filling a module's parameters and buffers in place."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import dcformat
from dcformat.codec import decode as codec
from dcformat.interop import torch as dcnn_torch

torch = pytest.importorskip("torch")


def make_module(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.BatchNorm2d(8),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 6 * 6, 10),
    )


def quantize(weight: np.ndarray, bits: int) -> tuple[dcformat.Quantized, np.ndarray]:
    """Linear quantization of a weight to 2**bits levels: the tensor and its dequantized values."""
    levels = np.linspace(weight.min(), weight.max(), 1 << bits).astype(np.float32)
    codes = np.abs(weight.reshape(-1, 1) - levels).argmin(axis=1)
    return dcformat.Quantized(levels, codes, weight.shape), levels[codes].reshape(weight.shape)


@pytest.fixture
def saved(tmp_path):
    """A trained-looking module saved with quantized weights; the state dict it decodes to."""
    source = make_module(0)
    source.train()
    source(torch.randn(4, 3, 8, 8))  # gives the BatchNorm buffers non-default values
    tensors, expect = {}, {}
    for name, value in source.state_dict().items():
        array = value.numpy()
        if name.endswith("weight") and array.ndim >= 2:
            tensors[name], expect[name] = quantize(array, 5)
        else:
            tensors[name], expect[name] = array, array
    path = tmp_path / "module.dcnn"
    dcformat.save_file(tensors, path)
    return path, {name: torch.from_numpy(np.array(v)) for name, v in expect.items()}


@pytest.mark.parametrize("threads", [1, 2])
def test_fills_in_place(saved, threads: int) -> None:
    path, expect = saved
    module = make_module(1)
    before = {name: (id(t), t.data_ptr()) for name, t in module.state_dict(keep_vars=True).items()}
    result = dcnn_torch.load_into(module, path, threads=threads)
    assert result == dcnn_torch.LoadResult([], [])
    assert result.missing_keys == [] and result.unexpected_keys == []
    after = module.state_dict(keep_vars=True)
    assert {name: (id(t), t.data_ptr()) for name, t in after.items()} == before
    assert isinstance(after["0.weight"], torch.nn.Parameter)
    for name, want in expect.items():
        assert after[name].dtype == want.dtype
        assert torch.equal(after[name].detach(), want), name
    reference = make_module(2)
    reference.load_state_dict(expect)
    module.eval()
    reference.eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(module(x), reference(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_decodes_to_the_module_dtype(saved, dtype: torch.dtype) -> None:
    path, expect = saved
    module = make_module(1).to(dtype)
    dcnn_torch.load_into(module, path)
    state = module.state_dict()
    assert state["3.weight"].dtype == dtype
    assert state["1.num_batches_tracked"].dtype == torch.int64
    for name, want in expect.items():
        assert torch.equal(state[name], want.to(state[name].dtype)), name


def test_strict_reports_missing_and_unexpected_keys(tmp_path, saved) -> None:
    _, expect = saved
    tensors = {name: value.numpy() for name, value in expect.items() if name != "3.bias"}
    tensors["extra.weight"] = np.ones(3, np.float32)
    other = tmp_path / "other.dcnn"
    dcformat.save_file(tensors, other)
    module = make_module(1)
    snapshot = {name: t.clone() for name, t in module.state_dict().items()}
    with pytest.raises(dcformat.DcnnError) as info:
        dcnn_torch.load_into(module, other)
    assert "3.bias" in str(info.value) and "extra.weight" in str(info.value)
    assert all(torch.equal(module.state_dict()[name], t) for name, t in snapshot.items())  # untouched
    result = dcnn_torch.load_into(module, other, strict=False)
    assert result == (["3.bias"], ["extra.weight"])
    assert torch.equal(module.state_dict()["3.bias"], snapshot["3.bias"])
    assert torch.equal(module.state_dict()["3.weight"], expect["3.weight"])


def test_shape_mismatch_raises_before_copying(tmp_path, saved) -> None:
    _, expect = saved
    tensors = {name: value.numpy() for name, value in expect.items()}
    tensors["3.weight"] = np.zeros((10, 7), np.float32)
    other = tmp_path / "other.dcnn"
    dcformat.save_file(tensors, other)
    module = make_module(1)
    snapshot = {name: t.clone() for name, t in module.state_dict().items()}
    for strict in (True, False):
        with pytest.raises(dcformat.DcnnError) as info:
            dcnn_torch.load_into(module, other, strict=strict)
        assert info.value.tensor == "3.weight"
    assert all(torch.equal(module.state_dict()[name], t) for name, t in snapshot.items())


def test_bad_arguments(saved, tmp_path) -> None:
    path, _ = saved
    with pytest.raises(dcformat.DcnnError):
        dcnn_torch.load_into({"0.weight": torch.zeros(1)}, path)
    with pytest.raises(dcformat.DcnnIOError):
        dcnn_torch.load_into(make_module(1), tmp_path / "missing.dcnn")
    with pytest.raises(dcformat.DcnnError):
        dcnn_torch.load_into(make_module(1), path, threads=0)


def test_importing_dcformat_does_not_import_torch() -> None:
    imports = "import sys, dcformat, dcformat.interop.torch, dcformat.interop.scipy, dcformat.codec.decode"
    code = f"{imports}; assert 'torch' not in sys.modules and 'scipy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_native_and_numpy_paths_load_alike(saved, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = saved
    states = []
    for no_native in ("1", "0") if codec.enabled() else ("1",):
        monkeypatch.setenv("DCNN_NO_NATIVE", no_native)
        module = make_module(3)
        dcnn_torch.load_into(module, path)
        states.append(module.state_dict())
    for state in states[1:]:
        assert all(torch.equal(state[name], t) for name, t in states[0].items())
