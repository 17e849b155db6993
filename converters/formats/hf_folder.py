"""Hugging Face style model folders in and out, and the per-tensor tasks of weight files.

A folder's weights are one ``*.safetensors`` or ``*.bin``/``*.pt``/``*.pth`` file, or shards
listed by an index (``model.safetensors.index.json``, ``pytorch_model.bin.index.json``: a
``weight_map`` from tensor name to shard file). Every other file of the folder (configs,
tokenizer, README, the index itself) is a side file, kept byte for byte in the .dcnn's
source skeleton with the shard layout (source format ``hf-folder``, see the spec). Side
files over SIDE_FILE_LIMIT bytes (typically the same weights in another format) are left
out and listed; side files over SIDE_TOTAL_LIMIT bytes in all are an error.
"""

from __future__ import annotations

import io
import json
import os
import stat
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import zstandard

from dcformat import DcnnFile, Source, replacing
from dcformat.layout import MAX_HEADER_BYTES

from ..errors import ConvertError
from ..parallel import CheckpointRef, SafetensorsRef, Task
from ..weight import Weight
from .base import ModelInput

SOURCE_FORMAT = "hf-folder"  # the .dcnn source format of a converted folder
SIDE_FILE_LIMIT = 16 << 20  # bytes of one side file kept in the .dcnn; larger ones are left out
SIDE_TOTAL_LIMIT = 32 << 20  # bytes of all side files together (the header holds at most 64 MiB)
SKELETON_ZSTD_LEVEL = 10
WEIGHT_KINDS = {".safetensors": "safetensors", ".bin": "pytorch", ".pt": "pytorch", ".pth": "pytorch"}
SINGLE_FILE = {"safetensors": "model.safetensors", "pytorch": "pytorch_model.bin"}
SKIPPED_FOLDERS = {".git"}


@dataclass(frozen=True)
class Shard:
    """One weight file of a folder: its path relative to the folder, tensors and metadata."""

    file: str
    tensors: list[str]
    metadata: dict[str, str]


@dataclass(frozen=True)
class Layout:
    """What a .dcnn needs to rebuild a folder: weight format, index file, shards, side files."""

    kind: str  # "safetensors" or "pytorch"
    index: str | None
    shards: list[Shard]
    files: list[tuple[str, bytes]]
    skipped: list[tuple[str, str]]  # (path, why) of files left out

    def pack(self) -> bytes:
        """The skeleton: zstd of a u64 manifest length, the manifest JSON and the side files' bytes."""
        manifest = {
            "kind": self.kind,
            "index": self.index,
            "shards": [{"file": s.file, "tensors": s.tensors, "metadata": s.metadata} for s in self.shards],
            "files": [{"path": path, "size": len(data)} for path, data in self.files],
            "skipped": [{"path": path, "why": why} for path, why in self.skipped],
        }
        text = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        body = b"".join([struct.pack("<Q", len(text)), text, *(data for _, data in self.files)])
        return zstandard.ZstdCompressor(level=SKELETON_ZSTD_LEVEL).compress(body)

    @classmethod
    def unpack(cls, skeleton: bytes, names: Sequence[str]) -> Layout:
        """The layout in a skeleton, checked against the file's tensor ``names``."""
        try:
            limit = SIDE_TOTAL_LIMIT + MAX_HEADER_BYTES  # side files and a manifest within a header
            body = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(skeleton)).read(limit + 1)
            if len(body) > limit:
                raise ValueError(f"over {limit} bytes")
            (length,) = struct.unpack_from("<Q", body)
            manifest = json.loads(body[8 : 8 + length])
            kind, index = manifest["kind"], manifest["index"]
            shards = [Shard(s["file"], list(s["tensors"]), dict(s["metadata"])) for s in manifest["shards"]]
            offset, files = 8 + length, []
            for entry in manifest["files"]:
                if type(entry["size"]) is not int or entry["size"] < 0:
                    raise ValueError(f"bad size {entry['size']!r}")
                files.append((entry["path"], body[offset : offset + entry["size"]]))
                offset += entry["size"]
            skipped = [(s["path"], s["why"]) for s in manifest["skipped"]]
        except (zstandard.ZstdError, struct.error, ValueError, KeyError, TypeError) as exc:
            raise ConvertError(f"the folder skeleton is damaged ({type(exc).__name__}: {exc})") from None
        if offset != len(body) or kind not in SINGLE_FILE:
            raise ConvertError("the folder skeleton is damaged (its sizes or kind do not add up)")
        for path in [*(s.file for s in shards), *(p for p, _ in files), *([index] if index else [])]:
            _relative(path, "the folder skeleton")
        listed = [name for s in shards for name in s.tensors]
        if sorted(listed) != sorted(names):
            raise ConvertError("the folder skeleton's shards do not list the file's tensors once each")
        return cls(kind, index, shards, files, skipped)


def file_tasks(path: Path) -> tuple[list[Task], dict[str, str], str]:
    """Per-tensor tasks of one weight file, in file order; its metadata; and the checkpoint key."""
    if WEIGHT_KINDS.get(path.suffix.lower()) == "safetensors":
        from .safetensors_file import read_header

        start, entries, metadata = read_header(path)
        tasks: list[Task] = [
            SafetensorsRef(str(path), name, kind, shape, start + begin, stop - begin)
            for name, kind, shape, begin, stop in entries
        ]
        return tasks, metadata, ""
    from .pytorch import load_state

    state, key = load_state(path)
    tasks = [
        CheckpointRef(
            str(path), name, t.numel() * t.element_size(), tuple(t.shape), str(t.dtype).split(".")[-1]
        )
        for name, t in state.items()
    ]
    return tasks, {}, key


def _dtype_name(tensor: Any) -> str:
    """The dtype name (``float32``) of a torch tensor."""
    return str(tensor.dtype).removeprefix("torch.")


def read_folder(folder: Path) -> tuple[ModelInput, list[Task]]:
    """Open a model folder: its shards and index are checked and its side files read now;
    tensors are read by the tasks, in shard order then each shard's own order."""
    if not folder.is_dir():
        raise ConvertError("not a folder", path=str(folder))
    root = folder.resolve()
    index, kind, shard_files, weight_map = _weights_of(root)
    shards, tasks = [], []
    owner: dict[str, str] = {}
    for file in shard_files:
        shard_tasks, metadata, key = file_tasks(_inside(root, file, index or file))
        if key:
            raise ConvertError(
                f"shard {file} nests its state_dict under {key!r}; expected a plain state_dict"
            )
        names = [task.name for task in shard_tasks]
        for name in names:
            if name in owner:
                raise ConvertError(f"tensor {name!r} is in two shards: {owner[name]} and {file}", path=index)
            owner[name] = file
            if weight_map is not None and weight_map.get(name) != file:
                where = f"to {weight_map[name]}" if name in weight_map else "nowhere"
                raise ConvertError(
                    f"shard {file} holds tensor {name!r} but the index maps it {where}", path=index
                )
        shards.append(Shard(file, names, metadata))
        tasks.extend(shard_tasks)
    if weight_map is not None and len(owner) != len(weight_map):
        missing = sorted(set(weight_map) - set(owner))[0]
        raise ConvertError(
            f"the index maps {missing!r} to {weight_map[missing]}, which does not hold it", path=index
        )
    files, skipped = _side_files(root, set(shard_files))
    layout = Layout(kind, Path(index).name if index else None, shards, files, skipped)
    attributes = {"kind": kind, "shards": str(len(shards)), "side_files": str(len(files))}
    if layout.index:
        attributes["index"] = layout.index
    if skipped:
        attributes["left_out"] = ", ".join(f"{path} ({why})" for path, why in skipped)

    def weights() -> Iterator[Weight]:
        for task in tasks:
            yield task.load()

    nbytes = sum(task.nbytes for task in tasks)
    metadata = shards[0].metadata if all(s.metadata == shards[0].metadata for s in shards) else {}
    return ModelInput(weights, nbytes, metadata, Source(SOURCE_FORMAT, layout.pack(), attributes)), tasks


def _weights_of(root: Path) -> tuple[str | None, str, list[str], dict[str, str] | None]:
    """The index (its path), the weight kind, the shard files (relative) and the weight map."""
    top = sorted(p.name for p in root.iterdir())
    indexes = [
        n for n in top if n.endswith(".index.json") and Path(n[: -len(".index.json")]).suffix in WEIGHT_KINDS
    ]
    for kind in ("safetensors", "pytorch"):
        ours = [n for n in indexes if WEIGHT_KINDS[Path(n[: -len(".index.json")]).suffix] == kind]
        if len(ours) > 1:
            raise ConvertError(f"several weight indexes: {', '.join(ours)}", path=str(root))
        if ours:
            index = root / ours[0]
            weight_map = _weight_map(index)
            return str(index), kind, sorted(set(weight_map.values())), weight_map
    for kind in ("safetensors", "pytorch"):
        files = [n for n in top if WEIGHT_KINDS.get(Path(n).suffix.lower()) == kind and (root / n).is_file()]
        if len(files) > 1:
            raise ConvertError(f"several weight files and no index: {', '.join(files)}", path=str(root))
        if files:
            return None, kind, files, None
    raise ConvertError(
        "no weights: expected *.safetensors, *.bin, *.pt or *.pth, or a *.index.json", path=str(root)
    )


def _weight_map(index: Path) -> dict[str, str]:
    try:
        with open(index, "rb") as f:
            data = json.loads(f.read(SIDE_FILE_LIMIT + 1))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConvertError(f"cannot read the index: {exc}", path=str(index)) from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConvertError("the index has no weight_map", path=str(index))
    for name, file in weight_map.items():
        if not isinstance(file, str):
            raise ConvertError(f"the index maps {name!r} to {file!r}, not a file name", path=str(index))
        _relative(file, f"the index ({index})")
    return weight_map


def _relative(path: str, where: str) -> str:
    """``path`` unless it is not a plain relative path inside the folder."""
    pure = PurePosixPath(path)
    if (
        not path
        or "\\" in path
        or "\0" in path
        or pure.is_absolute()
        or ".." in pure.parts
        or path != pure.as_posix()
    ):
        raise ConvertError(f"{where} names {path!r}, a path outside the folder or not plainly relative")
    return path


def _inside(root: Path, file: str, where: str) -> Path:
    """The real path of ``file`` in the folder: it must exist and stay inside (links included)."""
    path = root / file
    if not path.exists():
        raise ConvertError(f"{file} is missing", path=where)
    real = path.resolve()
    if not real.is_relative_to(root):
        raise ConvertError(f"{file} links outside the folder (to {real})", path=where)
    if not real.is_file():
        raise ConvertError(f"{file} is not a regular file", path=where)
    return real


def _side_files(root: Path, shards: set[str]) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]]]:
    files, skipped, total = [], [], 0
    for directory, folders, names in os.walk(root):
        folders.sort()
        for name in [f for f in folders if f in SKIPPED_FOLDERS or (Path(directory) / f).is_symlink()]:
            folders.remove(name)
            skipped.append(((Path(directory) / name).relative_to(root).as_posix() + "/", "folder not copied"))
        for name in sorted(names):
            path = Path(directory) / name
            relative = path.relative_to(root).as_posix()
            if relative in shards:
                continue
            real = _inside(root, relative, str(root))
            mode = real.stat()
            if not stat.S_ISREG(mode.st_mode):
                skipped.append((relative, "not a regular file"))
                continue
            if mode.st_size > SIDE_FILE_LIMIT:
                skipped.append((relative, f"{mode.st_size} bytes, over {SIDE_FILE_LIMIT}"))
                continue
            total += mode.st_size
            if total > SIDE_TOTAL_LIMIT:
                raise ConvertError(f"the side files take over {SIDE_TOTAL_LIMIT} bytes", path=str(root))
            files.append((relative, real.read_bytes()))
    return files, skipped


def write_folder(
    dcnn: DcnnFile,
    dst: Path,
    stored: Callable[[str], np.ndarray],
    *,
    force: bool = False,
    single_file: bool = False,
) -> list[str]:
    """Restore a folder from an open .dcnn: the shards (or one weight file), the index and
    the side files, each file written atomically. A .dcnn not made from a folder gives one
    ``model.safetensors``. Returns the files written, relative to ``dst``.

    ``stored(name)`` gives a tensor's stored-form array; the file must be opened with
    framework="torch" for a pytorch folder.
    """
    source = dcnn.source()
    names = dcnn.keys()
    if source.format == SOURCE_FORMAT:
        layout = Layout.unpack(source.skeleton, names)
    else:
        layout = Layout("safetensors", None, [Shard("model.safetensors", names, dcnn.metadata())], [], [])
    if single_file:
        metadata = layout.shards[0].metadata if layout.shards else {}
        layout = Layout(
            layout.kind,
            None,
            [Shard(SINGLE_FILE[layout.kind], names, metadata)],
            [(p, d) for p, d in layout.files if p != layout.index],
            layout.skipped,
        )
    if dst.exists() and not dst.is_dir():
        raise ConvertError("the output exists and is not a folder", path=str(dst))
    if dst.is_dir() and any(dst.iterdir()) and not force:
        raise ConvertError(
            "the output folder is not empty; use --force to overwrite its files", path=str(dst)
        )
    dst.mkdir(parents=True, exist_ok=True)
    written = []
    for relative, data in layout.files:
        path = _target(dst, relative)
        with replacing(path) as tmp:
            tmp.write_bytes(data)
        written.append(relative)
    for shard in layout.shards:
        path = _target(dst, shard.file)
        if layout.kind == "safetensors":
            from .safetensors_file import write_tensors

            write_tensors(dcnn, path, stored, shard.tensors, shard.metadata)
        else:
            from .pytorch import write_state

            write_state(dcnn, path, shard.tensors)
        written.append(shard.file)
    return written


def _target(dst: Path, relative: str) -> Path:
    path = dst / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.is_dir():
        raise ConvertError("a link or folder is in the way", path=str(path))
    return path


def is_folder_target(path: Path) -> bool:
    """Whether an output path names a folder: an existing one, or a name without extension."""
    return path.is_dir() or not path.suffix or str(path).endswith(os.sep)


def split_safetensors(path: Path, folder: Path, shards: int) -> list[Path]:
    """Write ``path``'s tensors as ``shards`` Hugging Face style shards (about equal bytes,
    tensors kept whole, in file order) and their ``model.safetensors.index.json`` into
    ``folder``; the tensor bytes are copied as they are. Returns the shard paths."""
    from .safetensors_file import DTYPE_CODES, read_header

    start, entries, metadata = read_header(path)
    total = sum(stop - begin for *_, begin, stop in entries)
    groups: list[list[Any]] = [[] for _ in range(shards)]
    done = 0
    for entry in entries:
        groups[min(shards - 1, done * shards // max(total, 1))].append(entry)
        done += entry[4] - entry[3]
    names = [f"model-{k + 1:05d}-of-{shards:05d}.safetensors" for k in range(shards)]
    weight_map = {}
    with open(path, "rb") as src:
        for name, group in zip(names, groups, strict=True):
            header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
            offset = 0
            for tensor, kind, shape, begin, stop in group:
                header[tensor] = {
                    "dtype": DTYPE_CODES[kind],
                    "shape": list(shape),
                    "data_offsets": [offset, offset + stop - begin],
                }
                offset += stop - begin
                weight_map[tensor] = name
            text = json.dumps(header, separators=(",", ":")).encode()
            text += b" " * (-len(text) % 8)
            with replacing(folder / name) as tmp, open(tmp, "wb") as out:
                out.write(struct.pack("<Q", len(text)) + text)
                for *_, begin, stop in group:
                    src.seek(start + begin)
                    for first in range(begin, stop, 1 << 24):
                        out.write(src.read(min(1 << 24, stop - first)))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with replacing(folder / "model.safetensors.index.json") as tmp:
        tmp.write_text(json.dumps(index, indent=2) + "\n")
    return [folder / name for name in names]
