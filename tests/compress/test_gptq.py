"""Error feedback (GPTQ) into a fixed codebook: lower layer-output error than nearest-centroid
codes on correlated inputs, codes that stay in the codebook, dead inputs left alone."""

from __future__ import annotations

import numpy as np
import pytest

from converters.compress import gptq


def layer(seed: int = 0, rows: int = 48, cols: int = 96, samples: int = 1500):
    """A weight, inputs with strongly correlated channels (a low-rank mix plus noise), and a
    16-value codebook drawn from the weights."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.1, size=(rows, cols))
    codebook = np.sort(rng.choice(w.reshape(-1), 16, replace=False))
    return w, inputs(rng.normal(size=(12, cols)), samples, seed), codebook


def inputs(mix: np.ndarray, samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1000)
    return rng.normal(size=(samples, len(mix))) @ mix + 0.1 * rng.normal(size=(samples, mix.shape[1]))


def output_error(w: np.ndarray, decoded: np.ndarray, x: np.ndarray) -> float:
    return float(np.linalg.norm((w - decoded) @ x.T) / np.linalg.norm(w @ x.T))


def nearest(w: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    return np.abs(w[..., None] - codebook).argmin(-1)


def test_feedback_codes_beat_nearest_codes_of_the_same_codebook_on_correlated_inputs() -> None:
    w, x, codebook = layer()
    order, factor = gptq.inverse_factor(x.T @ x)
    codes, loss = gptq.quantize(w, [codebook], [len(w)], order, factor)
    assert codes.shape == w.shape and codes.min() >= 0 and codes.max() < len(codebook)
    fed, plain = output_error(w, codebook[codes], x), output_error(w, codebook[nearest(w, codebook)], x)
    assert fed < 0.6 * plain
    # the loss it reports is each row's ΔW H ΔWᵀ (H damped as the factor's)
    h = x.T @ x
    damped = h + np.eye(len(h)) * gptq.DAMP * np.mean(np.diag(h))
    delta = w - codebook[codes]
    np.testing.assert_allclose(loss, np.einsum("ij,jk,ik->i", delta, damped, delta), rtol=1e-4)


def test_on_unseen_inputs_of_the_same_kind_the_gain_holds() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.1, size=(48, 96))
    codebook = np.sort(rng.choice(w.reshape(-1), 16, replace=False))
    mix = rng.normal(size=(12, 96))
    x, unseen = inputs(mix, 400, seed=1), inputs(mix, 1500, seed=2)  # the same mix, other samples
    order, factor = gptq.inverse_factor(x.T @ x)
    codes, _ = gptq.quantize(w, [codebook], [len(w)], order, factor)
    assert output_error(w, codebook[codes], unseen) < 0.7 * output_error(
        w, codebook[nearest(w, codebook)], unseen
    )


def test_several_codebooks_and_row_scales_in_one_pass_match_separate_passes() -> None:
    w, x, codebook = layer()
    order, factor = gptq.inverse_factor(x.T @ x)
    scales = np.abs(w).max(axis=1)
    second = np.linspace(-1, 1, 8)  # in units of each row's scale
    together, _ = gptq.quantize(np.vstack([w, w]), [codebook, second], [len(w), len(w)], order, factor,
                                np.concatenate([np.ones(len(w)), scales]))  # fmt: skip
    alone, _ = gptq.quantize(w, [second], [len(w)], order, factor, scales)
    np.testing.assert_array_equal(together[len(w) :], alone)
    assert together[len(w) :].max() < len(second)


def test_an_input_never_driven_takes_nearest_codes_and_passes_no_error_on() -> None:
    w, x, codebook = layer()
    x[:, 7] = 0  # a dead input: H's row and column 7 are zero
    order, factor = gptq.inverse_factor(x.T @ x)
    codes, _ = gptq.quantize(w, [codebook], [len(w)], order, factor)
    np.testing.assert_array_equal(codes[:, 7], nearest(w, codebook)[:, 7])
    assert np.isfinite(factor).all()
    alive = np.delete(np.arange(w.shape[1]), 7)
    fed = output_error(w[:, alive], codebook[codes][:, alive], x[:, alive])
    assert fed < 0.6 * output_error(w[:, alive], codebook[nearest(w, codebook)][:, alive], x[:, alive])


def test_fixed_weights_keep_code_zero_and_the_others_never_take_it() -> None:
    w, x, codebook = layer()
    codebook = np.concatenate(([0.0], codebook))  # a zero symbol first
    fixed = np.zeros(w.shape, dtype=bool)
    fixed[::3, ::5] = True
    order, factor = gptq.inverse_factor(x.T @ x)
    codes, _ = gptq.quantize(w, [codebook], [len(w)], order, factor, fixed=fixed)
    assert (codes[fixed] == 0).all() and (codes[~fixed] > 0).all()


def test_a_hessian_of_the_wrong_size_is_an_error() -> None:
    w, x, codebook = layer()
    order, factor = gptq.inverse_factor(x[:, :10].T @ x[:, :10])
    with pytest.raises(ValueError, match="10 columns"):
        gptq.quantize(w, [codebook], [len(w)], order, factor)
    with pytest.raises(ValueError, match="square"):
        gptq.inverse_factor(np.zeros((3, 4)))


def test_input_hessians_of_linear_and_unfolded_conv_layers_with_their_halves() -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    from converters.compress.outputs import ModuleOutputs

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(4 * 3 * 3, 5))
    items = [torch.randn(2, 2, 6, 6) for _ in range(5)]
    outputs = ModuleOutputs(net, items)
    hessians = outputs.input_hessians(["0.weight", "2.weight", "2.bias"])
    assert sorted(hessians) == ["0.weight", "2.weight"]

    def gram(x: torch.Tensor) -> np.ndarray:
        x = x.detach().double().reshape(-1, x.shape[-1])
        return (x.T @ x).numpy()

    def patches(x: torch.Tensor) -> torch.Tensor:  # (positions, channel * ky * kx), as the weight's rows
        return nn.functional.unfold(x, 3, padding=1, stride=2).transpose(1, 2)

    conv = [gram(patches(x)) for x in items]
    linear = [gram(net[1](net[0](x))) for x in items]
    for name, grams in (("0.weight", conv), ("2.weight", linear)):
        expected = np.stack((np.mean(grams, 0), np.mean(grams[:2], 0), np.mean(grams[2:], 0)))
        np.testing.assert_allclose(hessians[name], expected, rtol=1e-9)
    # the conv's output from its patches and its weight's flat rows: the order matches
    weight = net[0].weight.detach().reshape(4, -1).double()
    direct = net[0](items[0]).detach().double() - net[0].bias.detach().double()[:, None, None]
    np.testing.assert_allclose(
        (patches(items[0]).double() @ weight.T).numpy(), direct.flatten(2).transpose(1, 2).numpy(), atol=1e-5
    )


def test_crossed_measurement_runs_each_item_with_the_other_halfs_values() -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    from converters.compress.outputs import ModuleOutputs

    torch.manual_seed(0)
    net = nn.Linear(3, 2, bias=False)
    items = [torch.randn(1, 3) for _ in range(4)]
    outputs = ModuleOutputs(net, items)
    w = net.weight.detach().numpy().copy()
    for first, second in ((w * 1.5, w), (w, w * 1.5)):  # fitted to the first half, to the second
        seen = [outputs.half(i) for i in range(4)]
        assert seen == [0, 0, 1, 1]
        error = outputs.error({}, crossed={"weight": (first, second)})
        wrong = 0.5 if first is not w else 0.0  # the second half's items run with ``first``
        assert error == pytest.approx((2 * wrong + 2 * (0.5 - wrong)) / 4)
    np.testing.assert_array_equal(net.weight.detach().numpy(), w)  # restored


def test_error_feedback_settings_are_chosen_and_the_target_holds_on_the_written_file(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    import dcformat
    from converters import SAFE, apply_options, save_module
    from converters.compress import calibrate as cal

    torch.manual_seed(0)
    mix = torch.randn(6, 48)
    net = nn.Sequential(nn.Linear(48, 32), nn.Tanh(), nn.Linear(32, 4))
    items = [torch.randn(16, 6) @ mix + 0.05 * torch.randn(16, 48) for _ in range(6)]
    chosen = []
    search = cal._search

    def spy(weights, ladders, evaluate, target):
        tensors, error, evaluations = search(weights, ladders, evaluate, target)
        fed = {id(o.tensor) for ladder in ladders.values() for o in ladder if o.crossed is not None}
        chosen.extend(name for name, t in tensors.items() if id(t) in fed)
        return tensors, error, evaluations

    config = apply_options(SAFE, [("max-output-error", "0.02")])
    assert not config.error_feedback and "error_feedback" not in config.to_dict()  # off by default
    cal._search = spy
    try:
        save_module(net, tmp_path / "off.dcnn", config, calibration=items)
        assert chosen == []
        config = apply_options(config, [("error-feedback", "on")])
        report = save_module(net, tmp_path / "m.dcnn", config, calibration=items)
    finally:
        cal._search = search
    assert "0.weight" in chosen  # the first layer's inputs are correlated: feedback pays there
    assert report.config["error_feedback"] is True
    decoded = {k: torch.from_numpy(v) for k, v in dcformat.load_file(tmp_path / "m.dcnn").items()}
    copy = nn.Sequential(nn.Linear(48, 32), nn.Tanh(), nn.Linear(32, 4))
    copy.load_state_dict(decoded)
    with torch.no_grad():
        errors = [float((copy(x) - net(x)).norm() / net(x).norm()) for x in items]
    assert np.mean(errors) == pytest.approx(report.output_error, rel=1e-3)
    assert report.output_error <= 0.02


def test_error_feedback_takes_on_or_off() -> None:
    from converters import SAFE, ConvertError, apply_options

    assert apply_options(SAFE, [("error-feedback", "ON")]).error_feedback
    with pytest.raises(ConvertError, match="expected 'on' or 'off'"):
        apply_options(SAFE, [("error-feedback", "yes")])


def test_a_fitted_file_that_misses_the_target_is_searched_again_without_feedback() -> None:
    from converters import SAFE, apply_options
    from converters.compress.calibrate import calibrate
    from converters.weight import Weight

    w, x, _ = layer()
    weight = Weight("fc.weight", w.astype(np.float32), "float32", "fc", role="weight")
    half = len(x) // 2
    grams = [x.T @ x / len(x), x[:half].T @ x[:half] / half, x[half:].T @ x[half:] / (len(x) - half)]
    fed_seen = []

    def evaluate(replaced, limit=None, crossed=None) -> float:
        if crossed:  # a measure that flatters every error-feedback setting...
            fed_seen.append(True)
            return 0.0
        if not replaced:
            return 0.0
        decoded = replaced["fc.weight"]  # ...which the fitted codes' own measure then refutes
        return float(np.linalg.norm(decoded - w) / np.linalg.norm(w))

    config = apply_options(SAFE, [("max-output-error", "0.05")])
    result = calibrate(
        [weight], config, evaluate, target=0.05, importance={"fc.weight": np.ones(w.size)},
        hessians={"fc.weight": np.stack(grams)},
    )  # fmt: skip
    assert fed_seen
    chosen = result.tensors["fc.weight"]
    assert result.error == pytest.approx(evaluate({"fc.weight": chosen.values(weight)}))
    assert result.error <= 0.05
