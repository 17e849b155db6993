"""dcformat.replacing: the one atomic file replacement (the writer and the converters use it)."""

from pathlib import Path

import pytest

import dcformat


def test_success_replaces_and_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    with dcformat.replacing(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # untouched until the block ends
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]


def test_an_error_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), dcformat.replacing(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]


def test_os_errors_become_dcnn_io_errors(tmp_path: Path) -> None:
    with pytest.raises(dcformat.DcnnIOError, match="cannot write here"):
        with dcformat.replacing(tmp_path / "missing" / "model.bin"):
            pass
    target = tmp_path / "model.bin"
    with pytest.raises(dcformat.DcnnIOError, match="cannot write") as info:
        with dcformat.replacing(target):
            raise FileNotFoundError(2, "No such file or directory")
    assert info.value.path == str(target)
    assert not target.exists() and list(tmp_path.iterdir()) == []
