"""Model folders in and out, and parallel conversion: the same bytes whatever the workers."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import dcformat
from converters.cli import convert_main
from converters.compress.config import SAFE
from converters.conversion import convert
from converters.errors import ConvertError
from converters.formats.hf_folder import read_folder, split_safetensors
from converters.parallel import SafetensorsRef, compressed
from converters.weight import Weight

SIDE = {"config.json": b'{"hidden_size": 64}\n', "tokenizer/vocab.txt": b"a\nb\nc\n", ".hidden": b"\x00\xff"}


def make_folder(folder: Path, shards: int = 3) -> dict[str, np.ndarray]:
    """A small sharded safetensors folder with side files; returns its tensors."""
    rng = np.random.default_rng(7)
    tensors = {
        "embed.weight": rng.standard_normal((64, 48)).astype(np.float32),
        "layer.0.weight": rng.standard_normal((48, 48)).astype(np.float32),
        "layer.0.bias": rng.standard_normal(48).astype(np.float32),
        "layer.1.weight": rng.standard_normal((48, 40)).astype(np.float16),
        "head.weight": rng.standard_normal((40, 32)).astype(np.float32),
    }
    folder.mkdir(parents=True)
    whole = folder.parent / f"{folder.name}.safetensors"
    save_file(tensors, str(whole), metadata={"format": "pt"})
    split_safetensors(whole, folder, shards)
    whole.unlink()
    for name, data in SIDE.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return tensors


def test_folder_converts_the_same_with_any_workers_and_restores(tmp_path: Path) -> None:
    tensors = make_folder(tmp_path / "model")
    outputs = []
    for workers in (1, 2, 9):  # 9: more workers than tensors
        dst = tmp_path / f"w{workers}.dcnn"
        report = convert(tmp_path / "model", dst, workers=workers)
        outputs.append(dst.read_bytes())
        processes = report.workers["processes"]
        assert sum(row["tensors"] for row in processes) == len(tensors)
        assert len(processes) <= min(workers, len(tensors)) and all(
            row["peak_rss_bytes"] > 0 for row in processes
        )
        assert (processes[0]["pid"] == os.getpid()) == (workers == 1)
    assert outputs[0] == outputs[1] == outputs[2]
    assert dcformat.validate(tmp_path / "w1.dcnn").ok

    restored = tmp_path / "restored"
    convert(tmp_path / "w2.dcnn", restored)
    original = sorted(
        p.relative_to(tmp_path / "model") for p in (tmp_path / "model").rglob("*") if p.is_file()
    )
    assert sorted(p.relative_to(restored) for p in restored.rglob("*") if p.is_file()) == original
    for name, data in SIDE.items():
        assert (restored / name).read_bytes() == data
    index = "model.safetensors.index.json"
    assert (restored / index).read_bytes() == (tmp_path / "model" / index).read_bytes()
    weight_map = json.loads((restored / index).read_text())["weight_map"]
    for shard in set(weight_map.values()):
        back = load_file(str(restored / shard))
        assert sorted(back) == sorted(n for n, s in weight_map.items() if s == shard)
        for name, array in back.items():
            assert array.dtype == tensors[name].dtype
            want = tensors[name].astype(np.float64)
            assert np.sqrt(np.mean((array - want) ** 2) / np.mean(want**2)) < 0.05  # 8-bit codes

    (restored / "config.json").write_bytes(b"edited")
    with pytest.raises(ConvertError, match="not empty"):
        convert(tmp_path / "w2.dcnn", restored)
    assert (restored / "config.json").read_bytes() == b"edited"
    convert(tmp_path / "w2.dcnn", restored, force=True)
    assert (restored / "config.json").read_bytes() == SIDE["config.json"]
    single = tmp_path / "single"
    convert(tmp_path / "w2.dcnn", single, single_file=True)
    assert sorted(p.name for p in single.iterdir()) == sorted(
        [".hidden", "config.json", "model.safetensors", "tokenizer"]
    )
    assert sorted(load_file(str(single / "model.safetensors"))) == sorted(tensors)


def test_order_is_the_source_order(tmp_path: Path) -> None:
    make_folder(tmp_path / "model", shards=2)
    model, tasks = read_folder(tmp_path / "model")
    order = []
    for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        data = (tmp_path / "model" / shard).read_bytes()
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        order += [name for name in header if name != "__metadata__"]  # each shard in its own order
    assert [task.name for task in tasks] == order
    assert model.source.format == "hf-folder" and model.source.attributes["shards"] == "2"


def test_bin_shards_convert_and_restore(tmp_path: Path) -> None:
    import torch

    folder = tmp_path / "model"
    folder.mkdir()
    rng = np.random.default_rng(3)
    shards = {
        "pytorch_model-00001-of-00002.bin": {
            "a.weight": rng.standard_normal((64, 32)),
            "a.bias": np.ones(64),
        },
        "pytorch_model-00002-of-00002.bin": {"b.weight": rng.standard_normal((32, 64))},
    }
    weight_map = {}
    for file, state in shards.items():
        torch.save({k: torch.tensor(v, dtype=torch.bfloat16) for k, v in state.items()}, folder / file)
        weight_map |= dict.fromkeys(state, file)
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text("{}")
    convert(folder, tmp_path / "m.dcnn", workers=2)
    convert(tmp_path / "m.dcnn", tmp_path / "back")
    assert sorted(p.name for p in (tmp_path / "back").iterdir()) == sorted(p.name for p in folder.iterdir())
    for file, state in shards.items():
        back = torch.load(tmp_path / "back" / file, weights_only=True)
        assert list(back) == list(state) and all(t.dtype == torch.bfloat16 for t in back.values())
        for name, array in state.items():
            error = back[name].double().numpy() - array
            assert np.sqrt(np.mean(error**2) / np.mean(array**2)) < 0.05


def _break(folder: Path, how: str) -> None:
    index = folder / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    first = "model-00001-of-00003.safetensors"
    if how == "missing shard":
        (folder / first).unlink()
    elif how == "tensor in two shards":
        save_file({"embed.weight": np.zeros(2, np.float32)}, str(folder / "model-00003-of-00003.safetensors"))
    elif how in ("parent", "absolute"):
        outside = "../evil.safetensors" if how == "parent" else str(folder.parent / "evil.safetensors")
        save_file({"x": np.zeros(2, np.float32)}, str(folder.parent / "evil.safetensors"))
        data["weight_map"]["embed.weight"] = outside
    elif how == "link outside":
        save_file({"x": np.zeros(2, np.float32)}, str(folder.parent / "evil.safetensors"))
        (folder / first).unlink()
        (folder / first).symlink_to(folder.parent / "evil.safetensors")
    elif how == "side file links outside":
        (folder.parent / "secret.txt").write_text("not the model's")
        (folder / "tokenizer.json").symlink_to(folder.parent / "secret.txt")
    elif how == "unlisted tensor":
        del data["weight_map"]["head.weight"]
    index.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("missing shard", "model-00001-of-00003.safetensors is missing"),
        ("tensor in two shards", "'embed.weight'"),
        ("parent", "outside the folder"),
        ("absolute", "outside the folder"),
        ("link outside", "links outside the folder"),
        ("side file links outside", "tokenizer.json links outside the folder"),
        ("unlisted tensor", "holds tensor 'head.weight' but the index maps it nowhere"),
    ],
)
def test_bad_shard_index_is_a_one_line_error(tmp_path: Path, capsys, how: str, message: str) -> None:
    make_folder(tmp_path / "model")
    _break(tmp_path / "model", how)
    assert convert_main([str(tmp_path / "model"), "-o", str(tmp_path / "m.dcnn"), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "m.dcnn").exists()


def test_skeleton_paths_are_checked_on_restore(tmp_path: Path) -> None:
    """A .dcnn whose folder layout names a path outside the output is refused, nothing written."""
    from converters.formats.hf_folder import Layout, Shard

    layout = Layout("safetensors", None, [Shard("model.safetensors", ["w"], {})], [("../x", b"1")], [])
    source = dcformat.Source("hf-folder", layout.pack())
    dcformat.save_file({"w": np.zeros(3, np.float32)}, tmp_path / "m.dcnn", source=source)
    with pytest.raises(ConvertError, match="outside the folder"):
        convert(tmp_path / "m.dcnn", tmp_path / "out")
    assert not (tmp_path / "x").exists() and not (tmp_path / "out").exists()


def test_a_worker_error_is_one_line(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "model"
    make_folder(folder)
    shard = folder / "model-00002-of-00003.safetensors"
    data = bytearray(shard.read_bytes())
    data[-4:] = np.array([np.nan], np.float32).tobytes()  # a NaN in a compressed tensor
    shard.write_bytes(bytes(data))
    assert convert_main([str(folder), "-o", str(tmp_path / "m.dcnn"), "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert "NaN or infinite" in err and err.count("\n") == 1, err
    assert not (tmp_path / "m.dcnn").exists()


@dataclass(frozen=True)
class Killed:
    """A task whose worker dies while reading it."""

    name: str = "killed"
    nbytes: int = 0

    def outline(self) -> Weight:
        return Weight(self.name, np.zeros(4, np.float32), "float32")

    def load(self) -> Weight:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")


def test_a_dead_worker_fails_the_conversion_and_writes_nothing(tmp_path: Path) -> None:
    from converters.conversion import _to_dcnn

    make_folder(tmp_path / "model")
    model, tasks = read_folder(tmp_path / "model")
    dst = tmp_path / "out" / "m.dcnn"
    dst.parent.mkdir()
    with pytest.raises(ConvertError, match="worker process died"):
        _to_dcnn(model, "model", dst, SAFE, False, [*tasks[:2], Killed(), *tasks[2:]], workers=2)
    assert list(dst.parent.iterdir()) == []


def test_workers_read_tensors_themselves(tmp_path: Path) -> None:
    """Tasks carry where a tensor lies, not the tensor: a task is small whatever the tensor."""
    import pickle

    make_folder(tmp_path / "model")
    _, tasks = read_folder(tmp_path / "model")
    assert all(isinstance(task, SafetensorsRef) for task in tasks)
    assert max(len(pickle.dumps(task)) for task in tasks) < 400
    results = list(compressed(tasks, SAFE, 2))
    assert [r.encoded().record.name for r in results] == [t.name for t in tasks]


def test_ray_gives_the_same_bytes(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    make_folder(tmp_path / "model")
    convert(tmp_path / "model", tmp_path / "one.dcnn", workers=1)
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        report = convert(tmp_path / "model", tmp_path / "ray.dcnn", workers=0, ray=True)
    finally:
        ray.shutdown()
    assert (tmp_path / "ray.dcnn").read_bytes() == (tmp_path / "one.dcnn").read_bytes()
    assert report.workers["backend"] == "ray"
    assert all(row["pid"] != os.getpid() for row in report.workers["processes"])


def test_two_shard_minilm_folder_round_trips(tmp_path: Path) -> None:
    """The real all-MiniLM-L6-v2 as a 2-shard folder converts (2 workers) and restores every
    file, and sentence-transformers loads it (benchmarks/folders.py also compares 1 worker
    and Ray)."""
    import shutil

    from examples.minilm import embed, model_dir

    folder = tmp_path / "minilm"
    shutil.copytree(model_dir(), folder, ignore=shutil.ignore_patterns("model.safetensors"))
    split_safetensors(model_dir() / "model.safetensors", folder, 2)
    convert(folder, tmp_path / "w2.dcnn", workers=2)

    restored = tmp_path / "restored"
    convert(tmp_path / "w2.dcnn", restored)
    for path in folder.rglob("*"):
        assert (restored / path.relative_to(folder)).exists(), path
        if path.is_file() and path.suffix != ".safetensors":
            assert (restored / path.relative_to(folder)).read_bytes() == path.read_bytes()
    cosine = (embed(restored) * embed(model_dir())).sum(axis=1)
    assert cosine.min() > 0.99
