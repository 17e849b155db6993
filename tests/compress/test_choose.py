"""Encoding choice: candidates decode alike, the cheapest by the writer's measure is chosen and
handed to the writer encoded."""

import numpy as np
import pytest
import torch

import dcformat
from converters.compress import CompressionConfig, LayerRule, compress_state_dict
from converters.compress.choose import cheapest, coded, exact
from converters.compress.share import SharedTensor, share_weights


def pruned_weights(shape: tuple[int, ...], keep: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    w[rng.random(shape) >= keep] = 0.0
    return w


def decode_via_file(tensor, tmp_path, name: str = "t") -> np.ndarray:
    path = tmp_path / f"{name}.dcnn"
    dcformat.save_file({name: tensor}, path)
    return dcformat.load_file(path)[name]


def test_candidates_decode_to_the_same_values(tmp_path) -> None:
    shared = share_weights(pruned_weights((40, 50), 0.2), 4).compact()
    options = coded(shared, (40, 50), "float32")
    assert [o.sparse for o in options] == [False, True]
    for i, option in enumerate(options):
        decoded = decode_via_file(option, tmp_path, f"c{i}")
        np.testing.assert_array_equal(decoded.reshape(-1), shared.decode())


def test_sparse_codes_only_where_zeros_abound() -> None:
    for keep, sparse in ((0.3, True), (0.7, False)):
        shared = share_weights(pruned_weights((30, 30), keep, seed=1), 3).compact()
        assert len(coded(shared, (30, 30), "float32")) == (2 if sparse else 1)


def test_sparse_codes_use_zero_as_the_exact_zero() -> None:
    w = pruned_weights((30, 30), 0.3, seed=1)
    sparse = coded(share_weights(w, 3).compact(), w.shape, "float32")[1]
    assert sparse.codebook[:1].view(np.uint32)[0] == 0  # +0.0, bit for bit
    assert sparse.codes.min() >= 1
    np.testing.assert_array_equal(sparse.positions, np.flatnonzero(w))


@pytest.mark.parametrize(
    ("weights", "bits", "expected"),
    [
        (pruned_weights((200, 300), 0.05), 4, "SPARSE_CODES"),
        (pruned_weights((200, 300), 1.0), 4, "DENSE_CODES"),
        # 30 distinct values: a codebook as big as the data, and records and tables besides
        (pruned_weights((6, 5), 1.0), 8, "RAW"),
    ],
    ids=["pruned", "unpruned", "tiny"],
)
def test_the_smallest_stored_size_wins(weights: np.ndarray, bits: int, expected: str) -> None:
    options = [
        exact(weights, "float32"),
        *coded(share_weights(weights, bits).compact(), weights.shape, "float32"),
    ]
    sizes = [dcformat.stored_size(o) for o in options]
    chosen = cheapest("layer.weight", options)
    assert chosen.stored_bytes == min(sizes) + len("layer.weight") - 1  # the record holds the real name
    assert dcformat.dcnn_pb2.Encoding.Name(chosen.record.encoding) == expected
    assert chosen.record.name == "layer.weight"


def test_compact_drops_unused_centroids_and_keeps_the_zero_symbol() -> None:
    codebook = np.array([0.0, -1.0, 2.0, 3.0, 5.0], np.float32)
    codes = np.array([1, 4, 0, 4, 1, 0], np.uint8)
    small = SharedTensor(codebook, codes, zero_symbol=True).compact()
    np.testing.assert_array_equal(small.codebook, [0.0, -1.0, 5.0])
    np.testing.assert_array_equal(small.decode(), codebook[codes])
    assert small.codes.dtype == np.uint8
    no_zero = SharedTensor(codebook, np.array([2, 4, 1, 4], np.uint8), zero_symbol=False).compact()
    np.testing.assert_array_equal(no_zero.codebook, [-1.0, 2.0, 5.0])
    np.testing.assert_array_equal(no_zero.codes, [1, 2, 0, 2])


def test_uncompressed_tensors_are_stored_exactly(tmp_path) -> None:
    rng = np.random.default_rng(2)
    state = {
        "fc.weight": torch.from_numpy(pruned_weights((64, 64), 0.3)),
        "fc.bias": torch.from_numpy(rng.standard_normal(64).astype(np.float32)),
        "bn.num_batches_tracked": torch.tensor(7),
        "small.weight": rng.standard_normal((4, 4)),  # float64, under min_size
        "emb.weight": torch.randn(8, 200).to(torch.bfloat16),
        "mask": np.arange(2048, dtype=np.int32).reshape(32, 64),
    }
    config = CompressionConfig(rules=(LayerRule("emb", compress=False),))
    result = compress_state_dict(state, config)
    coded_names = [t.report.name for t in result.tensors if t.report.weight_bits is not None]
    assert coded_names == ["fc.weight"]
    path = tmp_path / "m.dcnn"
    result.save(path)
    loaded = dcformat.load_file(path)
    assert list(loaded) == list(state)
    np.testing.assert_array_equal(loaded["fc.bias"], state["fc.bias"].numpy())
    assert loaded["bn.num_batches_tracked"] == 7 and loaded["bn.num_batches_tracked"].dtype == np.int64
    np.testing.assert_array_equal(loaded["small.weight"], state["small.weight"])
    np.testing.assert_array_equal(loaded["mask"], state["mask"])
    np.testing.assert_array_equal(loaded["emb.weight"], state["emb.weight"].float().numpy())
    fc = loaded["fc.weight"]
    np.testing.assert_array_equal(fc == 0, state["fc.weight"].numpy() == 0)
    assert len(np.unique(fc)) <= 32
