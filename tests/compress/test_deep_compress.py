"""The public retraining API: stages, resuming from checkpoints, distillation, the example."""

import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import dcformat
from converters.compress import CompressionConfig, LayerRule, Stage, TrainLoop, deep_compress

ROOT = Path(__file__).resolve().parents[2]


def tiny_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))


def data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(256, 10, generator=gen)
    y = (x[:, :4] * torch.arange(1, 5)).argmax(1)
    return [(x[i : i + 32], y[i : i + 32]) for i in range(0, 256, 32)]


CONFIG = CompressionConfig(
    fc_bits=3,
    min_size=64,
    prune_steps=3,
    rules=(LayerRule("0", sparsity=0.8), LayerRule("2.weight", compress=True)),
)


class Interrupt(Exception):
    pass


def shuffled_loop(stop_at: int | None = None):
    """A user loop whose batch order draws on the global torch RNG; raises at stage ``stop_at``."""
    batches = data()
    seen = []

    def train(model: nn.Module, stage: Stage) -> None:
        if stage.index == stop_at:
            raise Interrupt
        seen.append((stage.index, stage.name, stage.kind))
        opt = torch.optim.Adam(stage.parameters, lr=1e-2 if stage.kind == "prune" else 1e-3)
        for _ in range(2):
            for i in torch.randperm(len(batches)).tolist():
                x, y = batches[i]
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()

    return train, seen


def file_bytes(result, path: Path) -> bytes:
    result.save(path)
    return path.read_bytes()


@pytest.mark.parametrize("quantizer", ["kmeans", "ternary"])
@pytest.mark.parametrize("stop_at", [1, 3])
def test_resumed_run_equals_uninterrupted(tmp_path, quantizer: str, stop_at: int) -> None:
    train, seen = shuffled_loop()
    full = deep_compress(tiny_model(), train, config=CONFIG, quantizer=quantizer, progress=False)
    assert [s[0] for s in seen] == [0, 1, 2, 3]
    assert [s[2] for s in seen] == ["prune", "prune", "prune", "quantize"]

    ckpt = tmp_path / "ckpt"
    interrupted, _ = shuffled_loop(stop_at)
    with pytest.raises(Interrupt):
        deep_compress(tiny_model(), interrupted, config=CONFIG, quantizer=quantizer, checkpoint_dir=ckpt)
    assert len(list(ckpt.glob("stage-*.pt"))) == stop_at
    model = tiny_model()
    torch.manual_seed(456)  # as in a new process: the RNG state must come from the checkpoint
    train, seen = shuffled_loop()
    resumed = deep_compress(
        model, train, config=CONFIG, quantizer=quantizer, checkpoint_dir=ckpt, progress=False
    )
    assert [s[0] for s in seen] == list(range(stop_at, 4))
    assert file_bytes(resumed, tmp_path / "a.dcnn") == file_bytes(full, tmp_path / "b.dcnn")


def test_checkpoints_of_another_run_are_refused(tmp_path) -> None:
    train, _ = shuffled_loop()
    deep_compress(tiny_model(), train, config=CONFIG, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="another run"):
        deep_compress(tiny_model(), train, config=CONFIG, quantizer="binary", checkpoint_dir=tmp_path)


def test_train_loop_with_distillation_prunes_and_shares(tmp_path) -> None:
    model = tiny_model()
    loop = TrainLoop(data(), prune_epochs=2, quantize_epochs=2, lr=0.05)
    teachers = []
    loss_fn = loop.loss_fn

    def distill(teacher, base):
        teachers.append(teacher)
        from converters.compress import distillation_loss

        return distillation_loss(teacher, base)

    loop.distill = distill
    assert loss_fn is loop.loss_fn
    x, y = (torch.cat(t) for t in zip(*data(), strict=True))

    def errors(m: nn.Module) -> float:
        return float((m(x).argmax(1) != y).float().mean())

    result = deep_compress(model, loop, errors, CONFIG, distill=True, progress=False)
    assert len(teachers) == 4 and all(t is teachers[0] for t in teachers)
    assert not any(p.requires_grad for p in teachers[0].parameters())
    assert list(result.report.metrics) == ["dense", "pruned", "quantized", "fine-tuned"]
    w = dcformat.load_file(_save(result, tmp_path))["0.weight"]
    assert np.mean(w == 0) == pytest.approx(0.8, abs=0.01)
    assert len(np.unique(w)) <= 2**3


def test_reassign_moves_codes_and_the_file_holds_the_trained_weights(tmp_path) -> None:
    train, _ = shuffled_loop()
    fixed = deep_compress(tiny_model(), train, config=CONFIG, progress=False)
    model = tiny_model()
    moved = deep_compress(model, train, config=CONFIG, reassign=True, progress=False)
    codes = {t.report.name: t.codes for t in fixed.tensors if t.codes is not None}
    coded = [t for t in moved.tensors if t.codes is not None]
    assert any(not np.array_equal(t.codes, codes[t.report.name]) for t in coded)
    decoded = dcformat.load_file(_save(moved, tmp_path))
    for name, value in model.state_dict().items():
        assert np.array_equal(decoded[name], value.numpy())
    assert np.mean(decoded["0.weight"] == 0) == pytest.approx(0.8, abs=0.01)
    assert len(np.unique(decoded["0.weight"])) <= 2**3


def _save(result, tmp_path: Path) -> Path:
    path = tmp_path / "m.dcnn"
    result.save(path)
    return path


def test_importing_converters_does_not_import_torch() -> None:
    code = "import sys, converters; assert 'torch' not in sys.modules; converters.deep_compress"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.fixture(scope="module")
def small_mnist() -> tuple[np.ndarray, ...]:
    """640 training and 200 test images of the MNIST split, drawn at random (it is sorted)."""
    from examples.mnist import load_mnist

    x, y, x_test, y_test = load_mnist()
    rng = np.random.default_rng(0)
    train, test = rng.permutation(len(x))[:640], rng.permutation(len(x_test))[:200]
    return x[train], y[train], x_test[test], y_test[test]


def test_example_runs(tmp_path, capsys, small_mnist) -> None:
    example = runpy.run_path(str(ROOT / "examples" / "retrain_mnist.py"))  # its main() is not run
    example["main"].__globals__["load_mnist"] = lambda: small_mnist
    out = tmp_path / "lenet.dcnn"
    error = example["main"](["--out", str(out), "--epochs", "1"])
    assert "smaller, test error" in capsys.readouterr().out
    weights = dcformat.load_file(out)["fc1.weight"]
    assert np.mean(weights == 0) == pytest.approx(0.92, abs=0.01)
    assert error < 75  # it learned something in these few steps: chance is 90%


def test_readme_example_runs_as_written(tmp_path, monkeypatch, capsys, small_mnist) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Compress with retraining") :]
    code = section[section.index("```python\n") + 10 : section.index("```\n", section.index("```python"))]
    monkeypatch.setattr("examples.mnist.load_mnist", lambda: small_mnist)  # less data, same code
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert "fine-tuned" in capsys.readouterr().out
    weights = dcformat.load_file(tmp_path / "lenet.dcnn")
    assert np.mean(weights["fc1.weight"] == 0) == pytest.approx(0.9, abs=0.01)
    assert len(list((tmp_path / "ckpt").glob("stage-*.pt"))) == 4


def test_readme_sensitivity_example_runs_in_the_example(tmp_path, monkeypatch, capsys, small_mnist) -> None:
    """The README's second block, put where it says (before deep_compress), runs and sets bits."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Compress with retraining") :]
    blocks = section.split("```python\n")[1:3]
    example, sensitivity = (block[: block.index("```\n")] for block in blocks)
    call = example.index("result = converters.deep_compress(")
    code = example[:call] + sensitivity + example[call:]
    monkeypatch.setattr("examples.mnist.load_mnist", lambda: small_mnist)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    exec(compile(code, "README.md", "exec"), namespace)
    measured, config = namespace["measured"], namespace["config"]
    bits = {t.name: t.bits for t in measured.tensors}  # one bit under the plan's 4, 4 and 5
    assert bits == {"fc1.weight": 3, "fc2.weight": 3, "fc3.weight": 4}
    added = config.rules[2:]
    assert added and all(r.bits == bits[r.pattern] for r in added)
    assert sum(max(t.increase, 0) for t in measured.tensors if t.name in {r.pattern for r in added}) <= 0.5
    file_bits = {row.name: row.weight_bits for row in namespace["result"].report.tensors}
    assert all(file_bits[r.pattern] == r.bits for r in added)
    assert "fine-tuned" in capsys.readouterr().out


def test_row_scales_are_trained_and_the_file_holds_the_trained_weights(tmp_path) -> None:
    train, _ = shuffled_loop()
    plain = deep_compress(tiny_model(), train, config=CONFIG, reassign=True, progress=False)
    model = tiny_model()
    ckpt = tmp_path / "ckpt"
    scaled = deep_compress(
        model, train, config=CONFIG, reassign=True, row_scales=True, checkpoint_dir=ckpt, progress=False
    )
    path = _save(scaled, tmp_path)
    decoded = dcformat.load_file(path)
    for name, value in model.state_dict().items():
        assert np.array_equal(decoded[name], value.numpy())
    with dcformat.safe_open(path) as f:
        for name, rows in (("0.weight", 32), ("2.weight", 4)):
            codes = f.get_codes(name)
            assert codes.scales is not None and codes.scales.shape == (rows,)
            assert len(np.unique(codes.scales)) > 1
            assert len(codes.codebook) <= 2**3
            assert f.get_codes(name).codebook.tolist() != plain.tensors[0].codebook.tolist()
    assert np.mean(decoded["0.weight"] == 0) == pytest.approx(0.8, abs=0.01)
    # Resuming from the last checkpoint (codes, codebooks and scales) writes the same file.
    again = deep_compress(
        tiny_model(),
        train,
        config=CONFIG,
        reassign=True,
        row_scales=True,
        checkpoint_dir=ckpt,
        progress=False,
    )
    assert file_bytes(again, tmp_path / "b.dcnn") == path.read_bytes()
