"""dcnn-inspect --plot: a PNG per file, the errors recorded at conversion, a clear message
without matplotlib."""

from __future__ import annotations

import json
import sys

import numpy as np

import dcformat
from converters import SAFE, apply_options, compress_state_dict, convert
from converters.cli import inspect_main


def model(tmp_path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    tensors = {
        "fc.weight": rng.standard_normal((64, 64)).astype(np.float32),
        "fc.bias": np.zeros(64, np.float32),
    }
    save_file(tensors, tmp_path / "m.safetensors")
    report = convert(tmp_path / "m.safetensors", tmp_path / "m.dcnn", apply_options(SAFE, [("bits", "4")]))
    return report


def test_conversion_records_each_lossy_tensors_error(tmp_path) -> None:
    report = model(tmp_path)
    with dcformat.safe_open(tmp_path / "m.dcnn") as f:
        recorded = json.loads(f.source().attributes["errors"])
    assert recorded == {"fc.weight": round(report.errors["fc.weight"], 6)} and recorded["fc.weight"] > 0


def test_plot_writes_a_png(tmp_path, capsys) -> None:
    model(tmp_path)
    assert inspect_main([str(tmp_path / "m.dcnn"), "--plot", str(tmp_path / "m.png")]) == 0
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_what_to_install(tmp_path, capsys, monkeypatch) -> None:
    compress_state_dict({"w": np.ones((32, 32), np.float32)}).save(tmp_path / "m.dcnn")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert inspect_main([str(tmp_path / "m.dcnn"), "--plot", str(tmp_path / "m.png")]) == 2
    assert "pip install 'dcnn[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "m.png").exists()


def test_plot_leaves_float16_tensors_out_of_the_histograms(tmp_path) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    tensors = {
        "fc.weight": rng.standard_normal((64, 64)).astype(np.float32),
        "fc.bias": np.ones(64, np.float32),
    }
    save_file(tensors, tmp_path / "m.safetensors")
    report = convert(tmp_path / "m.safetensors", tmp_path / "m.dcnn", SAFE)
    assert {row.name: row.encoding for row in report.tensors}["fc.bias"] == "RAW_NARROW"
    assert inspect_main([str(tmp_path / "m.dcnn"), "--plot", str(tmp_path / "m.png")]) == 0
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
