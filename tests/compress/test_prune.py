"""Magnitude pruning: thresholds, schedules, and masks that hold through training."""

import numpy as np
import pytest
import torch
from torch import nn

from converters.compress.config import TensorPlan
from converters.compress.prune import Pruner, prune_array, quality_threshold, sparsity_mask


def plan(name: str, *, sparsity: float | None = None, quality: float | None = None) -> TensorPlan:
    return TensorPlan(name, "fc", 5, "linear", sparsity=sparsity, quality=quality)


def test_sparsity_mask_keeps_the_largest_magnitudes() -> None:
    w = np.random.default_rng(0).standard_normal((50, 40))
    mask = sparsity_mask(w, 0.9)
    assert mask.sum() == 200
    assert np.abs(w[mask]).min() > np.abs(w[~mask]).max()


def test_sparsity_mask_never_revives() -> None:
    w = np.random.default_rng(1).standard_normal(1000)
    within = np.random.default_rng(2).random(1000) < 0.5
    mask = sparsity_mask(w, 0.8, within)
    assert mask.sum() == 200
    assert not (mask & ~within).any()
    assert np.abs(w[mask]).min() >= np.abs(w[within & ~mask]).max()


def test_quality_rule_is_quality_times_std() -> None:
    w = np.random.default_rng(3).standard_normal((30, 30)).astype(np.float32)
    assert quality_threshold(w, 0.7) == pytest.approx(0.7 * np.std(w.astype(np.float64)))
    pruned = prune_array(w, plan("w", quality=0.7))
    keep = np.abs(w) > 0.7 * np.std(w.astype(np.float64))
    np.testing.assert_array_equal(pruned, np.where(keep, w, 0))
    assert pruned.dtype == w.dtype


def test_schedule_reaches_target_geometrically() -> None:
    torch.manual_seed(0)
    model = nn.Linear(100, 100)
    pruner = Pruner(model, [plan("weight", sparsity=0.936)], steps=3)
    kept = []
    previous = torch.ones(100, 100, dtype=torch.bool)
    for _ in range(3):
        with torch.no_grad():  # retraining moves the weights between steps
            model.weight.add_(0.01 * torch.randn_like(model.weight) * (model.weight != 0))
        pruner.step()
        mask = pruner.masks["weight"]
        assert not (mask & ~previous).any()
        previous = mask
        kept.append(int(mask.sum()))
        assert torch.equal(model.weight != 0, mask)
    assert kept == [4000, 1600, 640]  # kept fraction 0.4, 0.16, 0.064
    with pytest.raises(ValueError, match="steps are done"):
        pruner.step()


def test_quality_schedule_ramps_to_quality_times_std() -> None:
    torch.manual_seed(1)
    model = nn.Linear(200, 50)
    w0 = model.weight.detach().numpy().copy()
    pruner = Pruner(model, [plan("weight", quality=1.0)], steps=2)
    pruner.step()
    std = np.std(w0.astype(np.float64))
    np.testing.assert_array_equal(pruner.masks["weight"].numpy(), np.abs(w0) > 0.5 * std)
    pruner.step()
    np.testing.assert_array_equal(pruner.masks["weight"].numpy(), np.abs(w0) > std)


def test_only_planned_parameters_are_pruned() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    bias = model[0].bias.detach().clone()
    other = model[1].weight.detach().clone()
    Pruner(model, [plan("0.weight", sparsity=0.5), plan("1.weight")]).step()
    assert int((model[0].weight == 0).sum()) == 32
    assert torch.equal(model[0].bias, bias) and torch.equal(model[1].weight, other)
    with pytest.raises(ValueError, match="not parameters"):
        Pruner(model, [plan("2.weight", sparsity=0.5)])


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> list[torch.Tensor]:
    """Run optimizer steps on random data; return the weight after each step."""
    gen = torch.Generator().manual_seed(0)
    seen = []
    for _ in range(steps):
        x = torch.randn(32, 20, generator=gen)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        seen.append(model[0].weight.grad.clone())
        opt.step()
        seen.append(model[0].weight.detach().clone())
    return seen


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.05),
        lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
        lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1),
    ],
)
def test_mask_holds_through_training_with_momentum_and_weight_decay(make_opt) -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(20, 30), nn.Tanh(), nn.Linear(30, 1))
    opt = make_opt(model.parameters())
    train_steps(model, opt, 3)  # momentum buffers are nonzero before pruning
    pruner = Pruner(model, [plan("0.weight", sparsity=0.75)])
    pruner.step()
    mask = pruner.masks["0.weight"]
    survivors = model[0].weight.detach().clone()

    with pruner.enforce():
        seen = train_steps(model, opt, 5)
    for tensor in seen:  # every gradient and every weight after each step
        assert torch.all(tensor[~mask] == 0)
    assert not torch.equal(model[0].weight[mask], survivors[mask])  # survivors did train

    # Control: without enforcement the same optimizer revives pruned weights.
    train_steps(model, opt, 1)
    assert torch.any(model[0].weight[~mask] != 0)
