"""dcformat.validate and the dcnn-validate command."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

import dcformat
from dcformat.cli import validate_main

VECTORS = Path(__file__).resolve().parents[2] / "spec" / "vectors"


def test_report_collects_problems_of_every_tensor(tmp_path):
    book = np.array([0, 1, 2], np.float32)
    tensors = {f"w{i}": dcformat.Quantized(book, np.arange(300) % 3, (300,)) for i in range(3)}
    path = tmp_path / "m.dcnn"
    dcformat.save_file(tensors, path)
    data = bytearray(path.read_bytes())
    with dcformat.safe_open(path) as f:
        starts = [f.preamble.data_start + f.header.tensors[i].codes.data.offset for i in (0, 2)]
    for start in starts:
        data[start] ^= 0x10
    path.write_bytes(bytes(data))
    report = dcformat.validate(path)
    assert not report.ok
    assert [(p.rule, p.tensor, p.offset) for p in report.problems] == [
        ("section-crc", "w0", starts[0]),
        ("section-crc", "w2", starts[1]),
    ]
    assert report.to_dict()["problems"][0]["tensor"] == "w0"


def test_missing_file_and_directory_are_problems_not_crashes(tmp_path):
    assert dcformat.validate(tmp_path / "nope.dcnn").problems[0].rule == "error"
    assert not dcformat.validate(tmp_path).ok


def test_cli_exit_codes_and_json(tmp_path, capsys):
    good = VECTORS / "sparse_codes.dcnn"
    bad = tmp_path / "bad.dcnn"
    shutil.copy(VECTORS / "invalid" / "section_crc.dcnn", bad)
    assert validate_main([str(good)]) == 0
    assert "ok (1 tensors)" in capsys.readouterr().out
    assert validate_main([str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "section-crc" in out and str(bad) in out
    assert validate_main(["--json", str(bad)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report[0]["ok"] is False and report[0]["problems"][0]["rule"] == "section-crc"


def test_cli_usage_error_exits_2():
    result = subprocess.run([sys.executable, "-m", "dcformat.cli"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "usage" in result.stderr
