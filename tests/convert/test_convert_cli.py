"""dcnn-convert and dcnn-inspect: exit codes, one-line errors, summaries, reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file as st_save

import dcformat
from converters.cli import convert_main, inspect_main


@pytest.fixture
def rng() -> np.random.Generator:
    """Fresh random data for each test, whatever the order the tests run in."""
    return np.random.default_rng(0)


@pytest.fixture
def model(tmp_path: Path, rng: np.random.Generator) -> Path:
    path = tmp_path / "model.safetensors"
    tensors = {
        "encoder.weight": rng.normal(size=(64, 64)).astype(np.float32),
        "encoder.bias": rng.normal(size=64).astype(np.float32),
        "head.weight": rng.normal(size=(32, 64)).astype(np.float32),
        "ids": np.arange(2048, dtype=np.int64),
    }
    st_save(tensors, str(path), metadata={"origin": "test"})
    return path


def status(main, argv: list[str]) -> int:
    """The exit status of an entry point, whether it returns it or argparse exits."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def one_error_line(capsys, code: int, expected: int, *words: str) -> str:
    err = capsys.readouterr().err
    assert code == expected
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dcnn-"), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0]
    return lines[0]


def test_convert_prints_a_summary_and_writes_a_report(model: Path, tmp_path: Path, capsys) -> None:
    out, report = tmp_path / "m.dcnn", tmp_path / "r.json"
    code = convert_main([str(model), "-o", str(out), "--bits", "head.*=4", "--report", str(report)])
    stdout = capsys.readouterr().out
    assert code == 0
    assert (
        "encoder.weight" in stdout and "DENSE_CODES" in stdout and f"{out.stat().st_size:,} bytes" in stdout
    )
    data = json.loads(report.read_text())
    rows = {row["name"]: row for row in data["tensors"]}
    assert rows["head.weight"]["weight_bits"] == 4 and rows["encoder.weight"]["weight_bits"] == 8
    assert rows["ids"]["encoding"] == "RAW" and rows["ids"]["error"] == 0.0
    assert data["total"]["file_bytes"] == out.stat().st_size
    assert data["total"]["ratio"] == pytest.approx(data["total"]["dense_bytes"] / out.stat().st_size)
    assert data["config"]["rules"] == [{"pattern": "head.*", "bits": 4}]


def test_decode_and_refuse_to_overwrite(model: Path, tmp_path: Path, capsys) -> None:
    out, back = tmp_path / "m.dcnn", tmp_path / "back.safetensors"
    assert convert_main([str(model), "-o", str(out), "-q"]) == 0
    assert capsys.readouterr().out == ""
    assert convert_main([str(out), "-o", str(back)]) == 0
    before = back.read_bytes()
    one_error_line(capsys, convert_main([str(out), "-o", str(back)]), 1, "exists", "--force")
    assert back.read_bytes() == before
    assert convert_main([str(out), "-o", str(back), "--force", "-q"]) == 0


@pytest.mark.parametrize(
    ("args", "expected", "words"),
    [
        (["{dir}/none.safetensors", "-o", "{dir}/x.dcnn"], 1, ["no such file"]),
        (["{model}", "-o", "{dir}/x.h5"], 2, ["cannot convert .safetensors to .h5"]),
        (["{model}", "-o", "{dir}/x.dcnn", "--bits", "x=abc"], 2, ["x=abc"]),
        (["{model}", "-o", "{dir}/x.dcnn", "--prune", "1.5"], 2, ["sparsity"]),
        (["{model}", "-o", "{dir}/x.dcnn", "--config", "{dir}/none.toml"], 1, ["no such file"]),
        (["{model}", "-o", "{dir}/x.dcnn", "--include", "ids"], 2, ["not floating point"]),
        (["{model}"], 2, ["-o/--output"]),
        (["{model}", "-o", "{dir}/x.dcnn", "--paper", "--config", "c.toml"], 2, ["not allowed"]),
        (["{dir}/garbage.safetensors", "-o", "{dir}/x.dcnn"], 1, ["not a valid safetensors file"]),
        (["{dir}/f8.safetensors", "-o", "{dir}/x.dcnn"], 1, ["unsupported dtype F8_E4M3"]),
        (["{dir}/garbage.dcnn", "-o", "{dir}/x.pt"], 1, ["not a .dcnn file"]),
    ],
)
def test_failures_are_one_line_with_the_right_status(model, tmp_path, capsys, args, expected, words) -> None:
    (tmp_path / "garbage.safetensors").write_bytes(b"\x10" + bytes(30))
    (tmp_path / "garbage.dcnn").write_bytes(b"hello world, this is not it")
    header = json.dumps({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}).encode()
    (tmp_path / "f8.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0\0")
    argv = [a.format(dir=tmp_path, model=model) for a in args]
    one_error_line(capsys, status(convert_main, argv), expected, *words)
    assert not (tmp_path / "x.dcnn").exists() and not list(tmp_path.glob(".*partial"))


def test_help_shows_examples(capsys) -> None:
    for main, words in (
        (convert_main, ["examples:", "--bits", "--prune", "--config"]),
        (inspect_main, ["examples:"]),
    ):
        assert status(main, ["--help"]) == 0
        out = capsys.readouterr().out
        assert all(word in out for word in words)


def test_config_file_and_ordered_options(model: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[rules."encoder.*"]\nbits = 3\nsparsity = 0.5\n')
    out = tmp_path / "m.dcnn"
    assert (
        convert_main([str(model), "-o", str(out), "--config", str(config), "--exclude", "head.*", "-q"]) == 0
    )
    with dcformat.safe_open(out) as f:
        encoder, head = f.info("encoder.weight"), f.info("head.weight")
    assert encoder.weight_bits == 3 and encoder.nonzeros == 64 * 64 // 2
    assert head.encoding == "RAW"


def test_inspect_table_and_json(model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "m.dcnn"
    assert convert_main([str(model), "-o", str(out), "--prune", "encoder.*=0.95", "-q"]) == 0
    assert inspect_main([str(out)]) == 0
    text = capsys.readouterr().out
    assert ".dcnn 1.3" in text and "source: safetensors" in text and "metadata origin: test" in text
    line = next(row for row in text.splitlines() if row.startswith("encoder.weight"))
    assert "SPARSE_CODES" in line and "5.0%" in line
    assert inspect_main([str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["version"] == [1, 3] and data["metadata"] == {"origin": "test"}
    rows = {row["name"]: row for row in data["tensors"]}
    assert rows["encoder.weight"]["index_bits"] > 0 and rows["encoder.weight"]["kept"] == 205 / 4096
    assert sum(row["dense_bytes"] for row in data["tensors"]) == data["total"]["dense_bytes"]
    assert data["total"]["file_bytes"] == out.stat().st_size


@pytest.mark.parametrize("content", [b"", b"not a dcnn file at all", b"\x89DCN\r\n\x1a\n" + bytes(16)])
def test_inspect_failures(tmp_path: Path, capsys, content: bytes) -> None:
    path = tmp_path / "bad.dcnn"
    path.write_bytes(content)
    one_error_line(capsys, inspect_main([str(path)]), 1, str(path))
    one_error_line(capsys, inspect_main([str(tmp_path / "none.dcnn")]), 1, "cannot open")
