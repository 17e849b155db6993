"""Per-tensor sensitivity to one bit less, and the rules chosen from it."""

from fnmatch import fnmatchcase

import pytest
import torch
from torch import nn

from converters.compress import CompressionConfig, LayerRule, deep_compress
from converters.compress.sensitivity import Sensitivities, TensorSensitivity, measure_sensitivity


class TwoBranches(nn.Module):
    """``loud(x) + quiet(x) / 1000``: the quiet branch barely reaches the output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.loud = nn.Linear(16, 64)
        self.quiet = nn.Linear(16, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.loud(x) + self.quiet(x) / 1000


INPUTS = torch.randn(128, 16, generator=torch.Generator().manual_seed(1))
CONFIG = CompressionConfig(fc_bits=4, min_size=64, rules=(LayerRule("*", sparsity=0.25),))


def relative_error(reference: torch.Tensor):
    def error(model: nn.Module) -> float:
        difference = model(INPUTS.to(reference.dtype)) - reference
        return float(difference.float().norm() / reference.float().norm())

    return error


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_tensor_that_barely_matters_is_the_cheap_one(dtype: torch.dtype) -> None:
    model = TwoBranches().to(dtype)
    with torch.no_grad():
        reference = model(INPUTS.to(dtype))
    result = measure_sensitivity(model, relative_error(reference), CONFIG, progress=False)
    rows = {t.name: t for t in result.tensors}
    assert set(rows) == {"loud.weight", "quiet.weight"}  # biases are stored exactly by this config
    assert all(t.bits == 3 and t.saved_bytes > 0 for t in rows.values())
    assert 0 < rows["quiet.weight"].increase < rows["loud.weight"].increase / 100
    assert result.error > 0.01  # pruned a quarter and shared at 4 bits
    cheapest = result.fewer_bits(rows["quiet.weight"].increase)
    assert [(r.pattern, r.bits) for r in cheapest] == [("quiet.weight", 3)]
    assert len(result.fewer_bits(float("inf"))) == 2
    assert result.fewer_bits(0.0) == []


def test_weights_are_restored_even_when_the_error_raises() -> None:
    model = TwoBranches()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def error(m: nn.Module) -> float:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return 0.0

    with pytest.raises(RuntimeError, match="boom"):
        measure_sensitivity(model, error, CONFIG, progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    measure_sensitivity(model, lambda m: 0.0, CONFIG, progress=False)
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)


def test_saved_bytes_are_what_the_file_saves() -> None:
    """The rules, given to deep_compress without retraining, shrink the file by the bytes measured."""
    model = TwoBranches()
    result = measure_sensitivity(model, lambda m: 0.0, CONFIG, progress=False)

    def size(config: CompressionConfig) -> int:
        out = deep_compress(TwoBranches(), lambda m, s: None, config=config, progress=False)
        return sum(t.report.stored_bytes for t in out.tensors)

    rules = result.fewer_bits(float("inf"))
    smaller = CompressionConfig(fc_bits=4, min_size=64, rules=CONFIG.rules + tuple(rules))
    assert size(CONFIG) - size(smaller) == sum(t.saved_bytes for t in result.tensors)


def test_one_bit_plans_are_not_measured() -> None:
    config = CompressionConfig(fc_bits=4, min_size=64, rules=(LayerRule("quiet", bits=1),))
    result = measure_sensitivity(TwoBranches(), lambda m: 0.0, config, progress=False)
    assert [t.name for t in result.tensors] == ["loud.weight"]


def test_the_cheapest_per_byte_come_first_and_the_budget_holds() -> None:
    rows = (
        TensorSensitivity("a.weight", 4, 1000, 0.004),  # 4e-6 a byte
        TensorSensitivity("b.weight", 4, 100, -0.001),  # free
        TensorSensitivity("c.weight", 3, 1000, 0.001),  # 1e-6 a byte
        TensorSensitivity("d.weight", 3, 0, 0.0),  # saves nothing
    )
    result = Sensitivities(0.1, rows)
    assert [(r.pattern, r.bits) for r in result.fewer_bits(0.0049)] == [("b.weight", 4), ("c.weight", 3)]
    assert len(result.fewer_bits(0.005)) == 3
    assert len(result.fewer_bits(1.0)) == 3
    # a tensor past the budget is passed over, a dearer-per-byte one that fits is still taken
    rows += (TensorSensitivity("e.weight", 4, 10, 0.0005),)  # 5e-5 a byte
    picked = [r.pattern for r in Sensitivities(0.1, rows).fewer_bits(0.0049)]
    assert sorted(picked) == ["b.weight", "c.weight", "e.weight"]
    with pytest.raises(ValueError, match="max_increase"):
        result.fewer_bits(-1.0)


def test_steps_down_are_taken_by_their_own_cost() -> None:
    rows = (
        TensorSensitivity("a.weight", 4, 1000, 0.001),  # 1e-6 a byte
        TensorSensitivity("a.weight", 3, 1800, 0.009),  # the second bit: 1e-5 a byte more
        TensorSensitivity("b.weight", 4, 1000, 0.002),  # 2e-6 a byte
        TensorSensitivity("head.weight", 4, 500, 0.0),  # not seen by the error: down to the last
        TensorSensitivity("head.weight", 3, 900, 0.0),
        TensorSensitivity("head.weight", 2, 1200, 0.0),
    )
    result = Sensitivities(0.1, rows)
    bits = lambda budget: {r.pattern: r.bits for r in result.fewer_bits(budget)}  # noqa: E731
    assert bits(0.0) == {"head.weight": 2}
    assert bits(0.0025) == {"head.weight": 2, "a.weight": 4}
    assert bits(0.0035) == {"head.weight": 2, "a.weight": 4, "b.weight": 4}
    assert bits(0.011) == {"head.weight": 2, "a.weight": 3, "b.weight": 4}
    # after b, a's second bit (0.008 more) no longer fits
    assert bits(0.0095) == {"head.weight": 2, "a.weight": 4, "b.weight": 4}


def test_measured_down_by_several_bits() -> None:
    model = TwoBranches()
    with torch.no_grad():
        reference = model(INPUTS)
    result = measure_sensitivity(model, relative_error(reference), CONFIG, down_by=3, progress=False)
    rows = {(t.name, t.bits): t for t in result.tensors}
    assert set(rows) == {(n, b) for n in ("loud.weight", "quiet.weight") for b in (3, 2, 1)}
    for name in ("loud.weight", "quiet.weight"):
        saved = [rows[name, b].saved_bytes for b in (3, 2, 1)]
        assert saved == sorted(saved) and saved[0] > 0
    assert rows["loud.weight", 1].increase > rows["loud.weight", 3].increase
    # with the budget of the quiet branch at 1 bit, it goes there and the loud one stays
    rules = result.fewer_bits(rows["quiet.weight", 1].increase)
    assert [(r.pattern, r.bits) for r in rules] == [("quiet.weight", 1)]
    with pytest.raises(ValueError, match="down_by"):
        measure_sensitivity(model, relative_error(reference), CONFIG, down_by=0, progress=False)


def test_a_rule_matches_its_tensor_only() -> None:
    rules = Sensitivities(0.0, (TensorSensitivity("layer[1]*.weight", 2, 10, 0.0),)).fewer_bits(1.0)
    assert fnmatchcase("layer[1]*.weight", rules[0].pattern)
    assert not fnmatchcase("layer1x.weight", rules[0].pattern)
