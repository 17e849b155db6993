"""The whole pipeline on a small real task, its configuration, and its report."""

import json
import os

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dcformat
from converters.compress import (
    CompressionConfig,
    LayerRule,
    TrainLoop,
    compress_model,
    compress_state_dict,
    train_loop,
)
from converters.compress.report import relative_index_cost, stage_bytes
from converters.errors import ConvertError


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train fastest on one thread, the more so on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, ...]:
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.int64)
    return x[:1400], y[:1400], x[1400:], y[1400:]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def test_compress_model_with_retraining_writes_a_file_that_scores(digits, tmp_path) -> None:
    x_train, y_train, x_test, y_test = digits
    torch.manual_seed(0)
    model = mlp()
    loader = DataLoader(
        TensorDataset(x_train, y_train),
        batch_size=32,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    train_loop(model, model.parameters(), loader, epochs=8, lr=0.05)
    dense = accuracy(model, x_test, y_test)
    assert dense > 0.9
    config = CompressionConfig.from_dict(
        {"fc_bits": 4, "prune_steps": 2, "rules": {"0": {"sparsity": 0.9}, "2": {"sparsity": 0.6}}}
    )
    result = compress_model(
        model,
        config,
        retrain=TrainLoop(loader, prune_epochs=3, quantize_epochs=2, quantize_lr=1e-4),
        evaluate=lambda m: accuracy(m, x_test, y_test),
    )
    path = tmp_path / "digits.dcnn"
    size = result.save(path, metadata={"task": "digits"})
    assert size == os.path.getsize(path) == result.report.file_bytes

    decoded = mlp()
    decoded.load_state_dict({k: torch.from_numpy(v) for k, v in dcformat.load_file(path).items()})
    assert accuracy(decoded, x_test, y_test) >= dense - 0.03
    for name, value in decoded.state_dict().items():  # the model ends holding the decoded weights
        assert torch.equal(value, model.state_dict()[name])
    w = decoded[0].weight
    assert (w != 0).float().mean().item() == pytest.approx(0.1, abs=1e-3)
    assert len(torch.unique(w[w != 0])) <= 15

    report = result.report
    assert list(report.metrics) == ["dense", "pruned", "quantized", "fine-tuned"]
    assert report.metrics["dense"] == dense
    totals = report.stage_totals()
    assert totals["original"] == 4 * sum(p.numel() for p in model.parameters())
    # Tiny tensors: the file's section alignment and records can outweigh the Huffman gain.
    assert totals["original"] > totals["pruned"] > totals["quantized"]
    assert totals["huffman"] < totals["file"] < totals["huffman"] + 256
    assert report.stage_ratios()["file"] > 12  # the raw biases are a quarter of the file
    rows = {t.name: t for t in report.tensors}
    assert rows["0.weight"].encoding == "SPARSE_CODES" and rows["0.weight"].index_bits is not None
    assert rows["0.bias"].encoding == "RAW" and rows["0.bias"].weight_bits is None
    with dcformat.safe_open(path) as f:
        assert f.metadata() == {"task": "digits"}
        assert f.info("0.weight").index_bits == rows["0.weight"].index_bits
        assert f.info("0.weight").nonzeros == rows["0.weight"].nonzeros
    json.dumps(report.to_dict())
    table = str(report)
    assert "0.weight" in table and "after Huffman" in table and "whole file" in table


def test_compress_state_dict_is_data_free(digits, tmp_path) -> None:
    x_train, y_train, x_test, y_test = digits
    torch.manual_seed(1)
    model = mlp()
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=32)
    train_loop(model, model.parameters(), loader, epochs=8, lr=0.05)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = compress_state_dict(state, CompressionConfig(fc_bits=6))
    result.save(tmp_path / "free.dcnn")
    decoded = mlp()
    loaded = dcformat.load_file(tmp_path / "free.dcnn")
    decoded.load_state_dict({k: torch.from_numpy(v) for k, v in loaded.items()})
    assert accuracy(decoded, x_test, y_test) >= accuracy(model, x_test, y_test) - 0.02
    assert result.report.metrics == {}
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # input untouched


def test_bfloat16_model_keeps_its_dtype_and_decodes_exactly(tmp_path) -> None:
    torch.manual_seed(2)
    model = nn.Linear(64, 32).to(torch.bfloat16)
    config = CompressionConfig(min_size=100, rules=(LayerRule("weight", sparsity=0.5),))
    result = compress_model(model, config)
    result.save(tmp_path / "bf16.dcnn")
    with dcformat.safe_open(tmp_path / "bf16.dcnn") as f:
        assert f.info("weight").dtype == f.info("bias").dtype == "bfloat16"
        for name, value in model.state_dict().items():
            np.testing.assert_array_equal(f.get_tensor(name), value.float().numpy())
    assert (model.weight == 0).float().mean().item() == 0.5


def test_plan_defaults_follow_rank_size_and_dtype() -> None:
    config = CompressionConfig(conv_bits=7, fc_bits=3, min_size=100)
    conv = config.plan("c.weight", (8, 4, 3, 3), np.float32)
    assert (conv.layer, conv.bits, conv.init, conv.prunes) == ("conv", 7, "linear", False)
    assert config.plan("f.weight", (10, 10), np.float16).bits == 3
    assert config.plan("f.weight", (9, 10), np.float32) is None  # below min_size
    assert config.plan("f.bias", (1000,), np.float32) is None  # rank 1
    assert config.plan("idx", (100, 100), np.int64) is None


def test_rules_override_in_order() -> None:
    config = CompressionConfig(
        rules=(
            LayerRule("fc*", bits=4, sparsity=0.9),
            LayerRule("fc2", quality=1.5, init="density"),
            LayerRule("fc3.weight", compress=False),
            LayerRule("ln.weight", compress=True, bits=6),
        )
    )
    fc1 = config.plan("fc1.weight", (100, 100), np.float32)
    assert (fc1.bits, fc1.sparsity, fc1.quality, fc1.init) == (4, 0.9, None, "linear")
    fc2 = config.plan("fc2.weight", (100, 100), np.float32)
    assert (fc2.bits, fc2.sparsity, fc2.quality, fc2.init) == (4, None, 1.5, "density")
    assert config.plan("fc3.weight", (100, 100), np.float32) is None
    assert config.plan("ln.weight", (8,), np.float32).bits == 6
    assert config.plan("fc1.bias", (100,), np.float32) is None  # a rule alone does not select


def test_config_from_dict_round_trips() -> None:
    data = {
        "conv_bits": 6,
        "init": "density",
        "prune_steps": 3,
        "rules": [{"pattern": "fc1", "bits": 4, "sparsity": 0.92}],
    }
    config = CompressionConfig.from_dict(data)
    assert config.rules == (LayerRule("fc1", bits=4, sparsity=0.92),)
    assert CompressionConfig.from_dict(config.to_dict()) == config
    by_pattern = CompressionConfig.from_dict({"rules": {"fc1": {"bits": 4, "sparsity": 0.92}}})
    assert by_pattern.rules == config.rules


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"fc_bit": 4}, "unknown config key"),
        ({"fc_bits": 0}, "fc_bits"),
        ({"conv_bits": 17}, "conv_bits"),
        ({"init": "kmeans++"}, "init must be one of"),
        ({"prune_steps": 0}, "prune_steps"),
        ({"min_size": -1}, "min_size"),
        ({"rules": [{"bits": 4}]}, "needs a 'pattern'"),
        ({"rules": [{"pattern": "a", "sparsity": 1.0}]}, "sparsity must be in"),
        ({"rules": [{"pattern": "a", "quality": -1}]}, "quality must be a positive"),
        ({"rules": [{"pattern": "a", "sparsity": 0.5, "quality": 1}]}, "not both"),
        ({"rules": [{"pattern": "a", "bitz": 4}]}, "unknown key"),
        ({"rules": [{"pattern": "a", "compress": "yes"}]}, "compress must be"),
        ({"rules": "fc1"}, "rules must be"),
        ({"rules": {"a": 4}}, "must be a table"),
    ],
)
def test_bad_config_raises_value_error(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CompressionConfig.from_dict(data)


def test_forcing_an_integer_tensor_raises() -> None:
    config = CompressionConfig(rules=(LayerRule("steps", compress=True),))
    with pytest.raises(ConvertError, match="not floating point"):
        compress_state_dict({"steps": np.arange(4096)}, config)


def test_stage_sizes_follow_the_relative_index_rule() -> None:
    positions = np.array([0, 3, 4, 40])  # gaps (pos - prev - 1): 0, 2, 0, 35
    # With b index bits a gap g costs g >> b filler entries before its own entry.
    assert relative_index_cost(positions, 5) == (4 * (5 + 6), 6)
    dense_run = np.r_[np.arange(0, 200, 2), 205]  # gaps 0, 1 x 99, 6: one bit, 3 fillers
    assert relative_index_cost(dense_run, 5) == ((101 + 3) * (5 + 1), 1)
    assert stage_bytes(positions, 41, 5) == 6  # 44 bits sparse beat 205 bits dense
    nine_of_ten = np.array([0, 1, 2, 3, 4, 5, 6, 7, 9])
    assert stage_bytes(nine_of_ten, 10, 5) == 7  # 50 bits dense beat 9 x (5 + 1) sparse
    assert stage_bytes(None, 10, 3) == 4  # no zeros: dense, 30 bits


def test_a_mask_of_survivors_costs_what_their_positions_cost() -> None:
    rng = np.random.default_rng(0)
    for density in (0.02, 0.5, 0.97, 1.0):  # read from survivors' positions, or from zero runs
        mask = rng.random(3000) < density
        for zeros in (slice(0, 0), slice(0, 7), slice(2990, None), slice(100, 600)):  # edges, long run
            mask_here = mask.copy()
            mask_here[zeros] = False
            positions = np.flatnonzero(mask_here)
            for bits in (3, 32):
                assert relative_index_cost(mask_here, bits) == relative_index_cost(positions, bits)
