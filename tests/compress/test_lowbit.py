"""Trained ternary and binary weights: values per layer, TTQ gradients, pruned zeros, file round trip."""

import numpy as np
import pytest
import torch
from torch import nn

import dcformat
from converters.compress import CompressionConfig, LayerRule, LowBitQuantizer, deep_compress


def tiny_model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))


def batches(seed: int, n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 8, generator=gen), torch.randint(0, 3, (32,), generator=gen)) for _ in range(n)]


@pytest.mark.parametrize(("kind", "count"), [("ternary", 3), ("binary", 2)])
def test_values_per_layer_hold_through_training(kind: str, count: int) -> None:
    model = tiny_model(0)
    names = ["0.weight", "2.weight"]
    q = LowBitQuantizer(model, names, kind, threshold=0.2)
    before = {n: q.layers[n].values() for n in names}
    opt = torch.optim.Adam([*q.parameters(), model[0].bias, model[2].bias], lr=1e-2)
    with q.enforce():
        for x, y in batches(1, 8):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            for name in names:
                values = np.unique(dict(model.named_parameters())[name].detach().numpy())
                assert len(values) == count
                assert (0.0 in values) == (kind == "ternary")
    for name in names:
        assert q.layers[name].values() != before[name]  # the scales were trained
        shared = q.shared()[name]
        assert len(shared.codebook) == count
        weight = dict(model.named_parameters())[name].detach().numpy()
        np.testing.assert_array_equal(shared.decode(), weight.reshape(-1))


@pytest.mark.parametrize("kind", ["ternary", "binary"])
def test_scale_and_latent_gradients_follow_ttq(kind: str) -> None:
    model = tiny_model(3)
    q = LowBitQuantizer(model, ["0.weight"], kind, threshold=0.1)
    layer = q.layers["0.weight"]
    x, y = batches(4, 1)[0]
    pos, neg = layer._regions()
    with q.enforce():
        nn.functional.cross_entropy(model(x), y).backward()
    assert model[0].weight.grad is None  # moved to the latent weights and scales
    # Reference: the weight's own gradient, computed without the quantizer's hooks.
    nn.functional.cross_entropy(model(x), y).backward()
    g = model[0].weight.grad * layer.m
    a = layer.scale_pos if kind == "binary" else layer.scale_neg
    b = layer.scale_pos
    if kind == "binary":
        assert torch.allclose(b.grad, g[pos].sum() - g[neg].sum(), atol=1e-6)
    else:
        assert torch.allclose(b.grad, g[pos].sum(), atol=1e-6)
        assert torch.allclose(a.grad, -g[neg].sum(), atol=1e-6)
        assert (~pos & ~neg).any()
    assert b.grad.abs().item() > 0
    expected = torch.where(pos, b.detach() * g, torch.where(neg, a.detach() * g, g))
    assert torch.allclose(layer.latent.grad, expected, atol=1e-7)


@pytest.mark.parametrize("kind", ["ternary", "binary"])
def test_pruned_weights_stay_zero(kind: str) -> None:
    model = tiny_model(5)
    with torch.no_grad():
        model[0].weight[model[0].weight.abs() < 0.15] = 0.0
    pruned = model[0].weight.detach() == 0
    q = LowBitQuantizer(model, ["0.weight"], kind)
    opt = torch.optim.Adam(q.parameters(), lr=0.05)
    with q.enforce():
        for x, y in batches(6, 6):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    w = model[0].weight.detach()
    assert (w[pruned] == 0).all()
    assert len(torch.unique(w)) == 3


@pytest.mark.parametrize(("kind", "count"), [("ternary", 3), ("binary", 2)])
def test_deep_compress_writes_codebooks_that_read_back(tmp_path, kind: str, count: int) -> None:
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(8, 128), nn.Tanh(), nn.Linear(128, 3))
    config = CompressionConfig(min_size=256, rules=(LayerRule("2.weight", compress=True),))
    result = deep_compress(model, batches(8), quantizer=kind, progress=False, config=config)
    path = tmp_path / "m.dcnn"
    result.save(path)
    loaded = dcformat.load_file(path)
    state = model.state_dict()
    coded = {t.report.name: t.report.weight_bits for t in result.tensors}
    for name in ("0.weight", "2.weight"):
        assert coded[name] is not None  # shared values, not stored exactly
        np.testing.assert_array_equal(loaded[name], state[name].numpy())
        values = np.unique(loaded[name])
        assert len(values) == count and (0.0 in values) == (kind == "ternary")
    for name in ("0.bias", "2.bias"):
        np.testing.assert_array_equal(loaded[name], state[name].numpy())
