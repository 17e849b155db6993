"""Trained quantization: centroid gradients, fixed codes, and the zero symbol under training."""

import numpy as np
import pytest
import torch
from torch import nn

from converters.compress.finetune import TrainedQuantizer, scaled_sharing
from converters.compress.share import SharedTensor, share_weights


def tiny_model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2))


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(16, 6, generator=gen), torch.randn(16, 2, generator=gen)


@pytest.mark.parametrize("pruned", [False, True])
def test_centroid_gradient_is_the_cluster_sum(pruned: bool) -> None:
    model = tiny_model(0)
    w = model[0].weight.detach().numpy().copy()
    if pruned:
        w[np.abs(w) < 0.15] = 0.0
    shared = share_weights(w, 2)
    assert shared.zero_symbol == pruned
    quantizer = TrainedQuantizer(model, {"0.weight": shared})
    x, y = batch(1)

    # Reference: the same network with the weight written as codebook[codes] for autograd.
    codebook = torch.tensor(shared.codebook, requires_grad=True)
    weight = codebook[torch.from_numpy(shared.codes.astype(np.int64))].view_as(model[0].weight)
    hidden = torch.tanh(x @ weight.T + model[0].bias.detach())
    ref_loss = ((hidden @ model[2].weight.detach().T + model[2].bias.detach() - y) ** 2).mean()
    ref_loss.backward()

    with quantizer.enforce():
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
    assert torch.allclose(loss, ref_loss)
    centroids = quantizer.layers["0.weight"].centroids
    expected = codebook.grad[1:] if pruned else codebook.grad
    assert torch.allclose(centroids.grad, expected, atol=1e-7)
    assert model[0].weight.grad is None
    # And explicitly: the sum of the weight gradients in each cluster.
    model[0].weight.grad = None
    ((model(x) - y) ** 2).mean().backward()
    g = model[0].weight.grad.numpy().reshape(-1)
    first = 1 if pruned else 0
    for j in range(first, len(shared.codebook)):
        assert np.isclose(centroids.grad[j - first].item(), g[shared.codes == j].sum(), atol=1e-6)


def test_training_moves_centroids_keeps_codes_and_zeros() -> None:
    model = tiny_model(2)
    w = model[0].weight.detach().numpy().copy()
    w[np.abs(w) < 0.2] = 0.0
    shared = share_weights(w, 3)
    zeros = torch.from_numpy(w == 0)
    quantizer = TrainedQuantizer(model, {"0.weight": shared})
    others = [p for n, p in model.named_parameters() if n != "0.weight"]
    opt = torch.optim.SGD(quantizer.parameters() + others, lr=0.05, momentum=0.9, weight_decay=0.1)
    x, y = batch(3)
    losses = []
    with quantizer.enforce():
        for _ in range(30):
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            weight = model[0].weight.detach()
            assert torch.all(weight[zeros] == 0)
            codebook = quantizer.layers["0.weight"].codebook()
            assert torch.equal(
                weight, codebook[torch.from_numpy(shared.codes.astype(np.int64))].view_as(model[0].weight)
            )
    assert losses[-1] < 0.8 * losses[0]
    final = quantizer.shared()["0.weight"]
    np.testing.assert_array_equal(final.codes, shared.codes)
    assert final.codebook[0] == 0.0
    assert not np.allclose(final.codebook, shared.codebook)
    np.testing.assert_array_equal(final.decode(), model[0].weight.detach().numpy().reshape(-1))


def test_weight_grad_is_moved_not_applied_by_an_optimizer_over_all_parameters() -> None:
    model = tiny_model(4)
    shared = share_weights(model[0].weight.detach().numpy(), 2)
    quantizer = TrainedQuantizer(model, {"0.weight": shared})
    opt = torch.optim.Adam([*model.parameters(), *quantizer.parameters()], lr=0.01)
    x, y = batch(5)
    with quantizer.enforce():
        for _ in range(3):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
    values = set(model[0].weight.detach().numpy().ravel().tolist())
    assert len(values) <= 4


def test_codes_must_fit_the_parameter() -> None:
    model = tiny_model(6)
    bad = SharedTensor(np.zeros(2, np.float32), np.zeros(9, np.uint8), zero_symbol=False)
    with pytest.raises(ValueError, match="do not fit"):
        TrainedQuantizer(model, {"0.weight": bad})
    with pytest.raises(ValueError, match="not parameters"):
        TrainedQuantizer(model, {"9.weight": bad})


@pytest.mark.parametrize("pruned", [False, True])
def test_reassign_trains_shadows_and_codes_follow_them(pruned: bool) -> None:
    model = tiny_model(4)
    w = model[0].weight.detach().numpy().copy()
    if pruned:
        w[np.abs(w) < 0.15] = 0.0
    shared = share_weights(w, 2)
    quantizer = TrainedQuantizer(model, {"0.weight": shared}, reassign=True)
    layer = quantizer.layers["0.weight"]
    assert layer.shadow is not None and any(p is layer.shadow for p in quantizer.parameters())
    start = layer.codes.clone()
    opt = torch.optim.Adam(quantizer.parameters(), lr=0.05)
    with quantizer.enforce():
        for step in range(30):
            x, y = batch(10 + step)
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            assert layer.shadow.grad is not None and layer.shadow.grad.abs().sum() > 0
            opt.step()
    weight = model[0].weight.detach().reshape(-1)
    codebook = layer.codebook()
    # The weights are always codebook[codes]; codes moved with the shadows, to the nearest centroid.
    assert torch.equal(weight, codebook[layer.codes])
    assert not torch.equal(layer.codes, start)
    trained = layer.codes != 0 if pruned else torch.ones_like(layer.codes, dtype=torch.bool)
    distance = (layer.shadow.detach()[:, None] - layer.centroids.detach()[None, :]).abs()
    nearest = distance.min(1).values
    chosen = (layer.shadow.detach() - weight[trained]).abs()
    assert torch.allclose(chosen, nearest)
    if pruned:  # pruned weights stay exactly 0
        assert torch.equal(weight == 0, torch.from_numpy(w.reshape(-1) == 0))
    assert len(torch.unique(weight)) <= len(shared.codebook)


def scaled_model(seed: int, pruned: bool) -> tuple[nn.Sequential, np.ndarray]:
    """A tiny model whose first layer's rows differ in magnitude, and that layer's weights."""
    model = tiny_model(seed)
    with torch.no_grad():
        model[0].weight.mul_(torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0])[:, None])
        if pruned:
            model[0].weight[model[0].weight.abs() < 0.05] = 0.0
    return model, model[0].weight.detach().numpy().copy()


@pytest.mark.parametrize("pruned", [False, True])
def test_row_scales_get_the_row_sums_of_their_gradients(pruned: bool) -> None:
    model, w = scaled_model(7, pruned)
    shared, scales = scaled_sharing(w.reshape(-1), 5, 2)
    assert scales.dtype == np.float16 and shared.zero_symbol == pruned
    quantizer = TrainedQuantizer(model, {"0.weight": shared}, scales={"0.weight": scales})
    layer = quantizer.layers["0.weight"]
    assert any(p is layer.magnitudes for p in quantizer.parameters())
    codes = torch.from_numpy(shared.codes.astype(np.int64))
    x, y = batch(8)

    # Reference: the weight written as codebook[codes] * scale[row] for autograd.
    codebook = torch.tensor(shared.codebook, requires_grad=True)
    scale = torch.tensor(scales.astype(np.float32), requires_grad=True)
    weight = codebook[codes].view(5, 6) * scale[:, None]
    assert torch.equal(weight, model[0].weight.detach())
    hidden = torch.tanh(x @ weight.T + model[0].bias.detach())
    ((hidden @ model[2].weight.detach().T + model[2].bias.detach() - y) ** 2).mean().backward()

    with quantizer.enforce():
        ((model(x) - y) ** 2).mean().backward()
    expected = codebook.grad[1:] if pruned else codebook.grad
    assert torch.allclose(layer.centroids.grad, expected, atol=1e-6)
    # The trained magnitudes are the scales times a fixed unit: their gradient is the scales'
    # over that unit, a sum over each row of the weight gradient times its centroid.
    unit = float(layer.magnitudes.detach()[0] / float(scales[0]))
    assert layer.magnitudes.grad.abs().min() > 0
    assert torch.allclose(layer.magnitudes.grad * unit, scale.grad, rtol=1e-4, atol=1e-7)
    assert model[0].weight.grad is None


@pytest.mark.parametrize("reassign", [False, True])
def test_row_scaled_training_keeps_one_codebook_and_the_zeros(reassign: bool) -> None:
    model, w = scaled_model(9, pruned=True)
    shared, scales = scaled_sharing(w.reshape(-1), 5, 3)
    k = len(shared.codebook)
    quantizer = TrainedQuantizer(model, {"0.weight": shared}, reassign=reassign, scales={"0.weight": scales})
    layer = quantizer.layers["0.weight"]
    others = [p for n, p in model.named_parameters() if n != "0.weight"]
    opt = torch.optim.Adam(quantizer.parameters() + others, lr=0.02)
    losses = []
    x, y = batch(20)
    with quantizer.enforce():
        for _ in range(30):
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            weight = model[0].weight.detach()
            stored = torch.from_numpy(quantizer.scales()["0.weight"].astype(np.float32))
            assert torch.equal(weight, (layer.codebook()[layer.codes].view(5, 6) * stored[:, None]))
    assert losses[-1] < losses[0]
    final, final_scales = quantizer.shared()["0.weight"], quantizer.scales()["0.weight"]
    assert final_scales.dtype == np.float16 and not np.array_equal(final_scales, scales)
    assert len(final.codebook) == k and final.codebook[0] == 0.0
    assert not np.allclose(final.codebook, shared.codebook)
    weight = model[0].weight.detach().numpy()
    np.testing.assert_array_equal(weight == 0, w == 0)  # pruned weights stay exactly 0
    normalized = weight.astype(np.float64) / final_scales.astype(np.float64)[:, None]
    assert len(np.unique(normalized.round(5))) == len(np.unique(final.codes)) <= k
    np.testing.assert_array_equal(
        (final.decode().reshape(5, 6) * final_scales.astype(np.float32)[:, None]), weight
    )


def test_row_scales_must_fit_the_parameter() -> None:
    model, w = scaled_model(6, pruned=False)
    shared, scales = scaled_sharing(w.reshape(-1), 5, 2)
    with pytest.raises(ValueError, match="row scales do not fit"):
        TrainedQuantizer(model, {"0.weight": shared}, scales={"0.weight": scales[:4]})
