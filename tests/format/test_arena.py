"""load_file decodes every tensor into one allocation (codec.Arena): what it hands out, and that
the tensors it gives are those get_tensor gives, on both decoders and any thread count."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import dcformat
from dcformat.codec import decode as codec

PATHS = ["numpy", "native"] if codec.enabled() else ["numpy"]


def root_of(array: np.ndarray) -> object:
    """The object that owns an array's memory (the end of its chain of bases)."""
    while isinstance(array, np.ndarray) and array.base is not None:
        array = array.base
    return array


def test_arena_hands_out_aligned_disjoint_arrays() -> None:
    arena = codec.Arena(1000)
    sizes = [(3, np.float32), (10, np.float16), (1, np.float64), (0, np.float32), (7, np.uint8)]
    arrays = [arena.new(count, dtype) for count, dtype in sizes]
    for array, (count, dtype) in zip(arrays, sizes, strict=True):
        assert array.shape == (count,) and array.dtype == dtype
        assert array.ctypes.data % codec.Arena.ALIGN == 0
        assert root_of(array) is root_of(arrays[0])
    for i, array in enumerate(arrays):  # writing one leaves the others as they were
        for other in arrays:
            other.view(np.uint8)[:] = 0
        array.view(np.uint8)[:] = 0xFF
        assert all(not other.view(np.uint8).any() for j, other in enumerate(arrays) if j != i)


def test_arena_allocates_separately_when_full() -> None:
    arena = codec.Arena(128)
    inside = arena.new(16, np.float32)  # 64 bytes
    past = arena.new(32, np.float32)  # 128 more: does not fit
    assert root_of(past) is not root_of(inside)
    assert past.shape == (32,) and past.dtype == np.float32
    assert root_of(arena.new(16, np.float32)) is root_of(inside)  # the room left is still used


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    """Dense codes (large enough for parallel chunks), sparse codes, row-scaled codes, and RAW."""
    rng = np.random.default_rng(3)
    book = np.concatenate(([0.0], rng.normal(size=15))).astype(np.float32)
    positions = np.sort(rng.choice(300 * 200, size=6000, replace=False))
    tensors = {
        "big": dcformat.Quantized(book, rng.integers(0, 16, (600, 500)), (600, 500)),
        "sparse": dcformat.Quantized(book, rng.integers(1, 16, 6000), (300, 200), positions=positions),
        "scaled": dcformat.Quantized(
            book,
            rng.integers(0, 16, (64, 40)),
            (64, 40),
            scales=rng.uniform(0.5, 2.0, 64).astype(np.float32),
        ),
        "half": dcformat.Quantized(book, rng.integers(0, 16, (30, 20)), (30, 20), dtype="float16"),
        "bias": rng.normal(size=200).astype(np.float32),
        "ids": np.arange(6, dtype=np.int64),
    }
    path = tmp_path_factory.mktemp("arena") / "m.dcnn"
    dcformat.save_file(tensors, path, chunk_size=256)
    return path


@pytest.mark.parametrize("decoder", PATHS)
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [None, "float16"])
def test_load_file_gives_what_get_tensor_gives(
    model, monkeypatch: pytest.MonkeyPatch, decoder: str, threads: int, dtype: str | None
) -> None:
    monkeypatch.setenv("DCNN_NO_NATIVE", "1" if decoder == "numpy" else "0")
    loaded = dcformat.load_file(model, threads=threads, dtype=dtype)
    with dcformat.safe_open(model) as f:
        assert list(loaded) == f.keys()
        for name, tensor in loaded.items():
            kind = dtype if f.info(name).dtype.startswith("float") else None
            want = f.get_tensor(name, dtype=kind)
            assert tensor.dtype == want.dtype and tensor.shape == want.shape, name
            np.testing.assert_array_equal(tensor, want, err_msg=name)
            assert tensor.flags.writeable and tensor.flags.c_contiguous, name


@pytest.mark.skipif(not codec.enabled(), reason="the arena serves the native decoder's outputs")
@pytest.mark.parametrize("threads", [1, 2])
def test_load_file_decodes_coded_tensors_into_one_allocation(model, threads: int) -> None:
    loaded = dcformat.load_file(model, threads=threads)
    roots = {name: id(root_of(loaded[name])) for name in ("big", "sparse", "scaled", "half")}
    assert len(set(roots.values())) == 1, roots
    ranges = sorted((t.ctypes.data, t.ctypes.data + t.nbytes) for t in loaded.values())
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(ranges))
    loaded["big"][...] = 7.0  # the tensors are independent arrays in it
    with dcformat.safe_open(model) as f:
        np.testing.assert_array_equal(loaded["sparse"], f.get_tensor("sparse"))


@pytest.mark.parametrize("size", [100, 5000, 3 << 20])
def test_arena_hands_out_zeros_whatever_was_freed_before(size: int) -> None:
    """A sparse tensor's decode writes only its stored entries into what the arena gives: the
    arena's arrays are zeros, also where the allocator hands back memory just freed dirty."""
    dirty = np.full(size + codec.Arena.ALIGN, 0xAB, np.uint8)  # the size the arena allocates
    del dirty
    arena = codec.Arena(size)
    pieces = [arena.new(n, np.float32) for n in (1, 10, size // 8)]
    pieces.append(arena.new(size, np.float32))  # past the end: allocated separately
    assert all(not piece.any() for piece in pieces)


def test_load_file_allocates_per_tensor_where_the_arena_is_refused(
    model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A header may declare more output than the system maps at once (zeros of tensors with no
    stored bytes add up): the tensors then come one allocation each, as from get_tensor."""

    def refused(self: codec.Arena, size: int) -> None:
        raise MemoryError(f"cannot map {size} bytes")

    with dcformat.safe_open(model) as f:
        want = {name: f.get_tensor(name) for name in f.keys()}
    monkeypatch.setattr(codec.Arena, "__init__", refused)
    for threads in (1, 2):
        loaded = dcformat.load_file(model, threads=threads)
        assert list(loaded) == list(want)
        for name, tensor in loaded.items():
            np.testing.assert_array_equal(tensor, want[name], err_msg=name)
