"""Reading and writing the Deep Compression release format (``.net``), bit for bit."""

import io
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dcformat
from converters.compress.config import SAFE
from converters.compress.tensor import compress_weight
from converters.formats.caffe_release.prototxt import parse
from converters.formats.caffe_release.read import read_net
from converters.formats.caffe_release.release import (
    CaffeImportError,
    ReleaseLayer,
    SparseWeight,
    decode_dense,
    dense_codes,
    encode_release,
    read_release,
)
from converters.formats.caffe_release.shapes import release_layers

# AlexNet's structure at reduced widths: 3x227x227 input, conv1 11x11/4, ceil pooling, LRN,
# grouped conv2 with pad 2, conv3-5, fc6-8.
ALEXNET_LIKE = """
name: "AlexNetLike"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 227 input_dim: 227
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 16 kernel_size: 11 stride: 4 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1"
  lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 32 pad: 2 kernel_size: 5 group: 2 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "norm2" type: "LRN" bottom: "conv2" top: "norm2" }
layer { name: "pool2" type: "Pooling" bottom: "norm2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv3" type: "Convolution" bottom: "pool2" top: "conv3"
  convolution_param { num_output: 48 pad: 1 kernel_size: 3 } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "conv4" type: "Convolution" bottom: "conv3" top: "conv4"
  convolution_param { num_output: 48 pad: 1 kernel_size: 3 group: 2 } }
layer { name: "relu4" type: "ReLU" bottom: "conv4" top: "conv4" }
layer { name: "conv5" type: "Convolution" bottom: "conv4" top: "conv5"
  convolution_param { num_output: 32 pad: 1 kernel_size: 3 group: 2 } }
layer { name: "relu5" type: "ReLU" bottom: "conv5" top: "conv5" }
layer { name: "pool5" type: "Pooling" bottom: "conv5" top: "pool5"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc6" type: "InnerProduct" bottom: "pool5" top: "fc6"
  inner_product_param { num_output: 64 } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7"
  inner_product_param { num_output: 64 } }
layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }
layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8"
  inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }
"""

# A SqueezeNet stem and fire module, named as in the SqueezeNet release.
SQUEEZENET_FIRE = """
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 1 dim: 3 dim: 64 dim: 64 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 24 kernel_size: 7 stride: 2 } }
layer { name: "relu_conv1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fire2/conv1x1_1" type: "Convolution" bottom: "pool1" top: "fire2/conv1x1_1"
  convolution_param { num_output: 8 kernel_size: 1 } }
layer { name: "fire2/relu_conv1x1_1" type: "ReLU"
  bottom: "fire2/conv1x1_1" top: "fire2/conv1x1_1" }
layer { name: "fire2/conv1x1_2" type: "Convolution" bottom: "fire2/conv1x1_1"
  top: "fire2/conv1x1_2" convolution_param { num_output: 16 kernel_size: 1 } }
layer { name: "fire2/conv3x3_2" type: "Convolution" bottom: "fire2/conv1x1_1"
  top: "fire2/conv3x3_2" convolution_param { num_output: 16 pad: 1 kernel_size: 3 } }
layer { name: "fire2/concat" type: "Concat" bottom: "fire2/conv1x1_2"
  bottom: "fire2/conv3x3_2" top: "fire2/concat" }
layer { name: "conv_final" type: "Convolution" bottom: "fire2/concat" top: "conv_final"
  convolution_param { num_output: 10 pad: 1 kernel_size: 1 } }
layer { name: "pool_final" type: "Pooling" bottom: "conv_final" top: "pool_final"
  pooling_param { pool: AVE global_pooling: true } }
"""


def reference_decode(data: bytes, layers: list[ReleaseLayer]) -> dict:
    """The release decoder's algorithm, entry by entry: an oracle independent of the code."""
    stream = io.BytesIO(data)
    counts = struct.unpack(f"<{len(layers)}I", stream.read(4 * len(layers)))
    out = {}
    for layer, n in zip(layers, counts, strict=True):
        bits = 8 if "conv" in layer.name else 4
        codebook = np.frombuffer(stream.read(4 * 2**bits), "<f4")
        bias = np.frombuffer(stream.read(4 * layer.bias_size), "<f4")
        code_bytes = stream.read((n - 1) // (8 // bits) + 1)
        index_bytes = stream.read((n - 1) // 2 + 1)
        code = np.zeros(layer.weight_size, np.uint8)
        position = -1
        for i in range(n):
            shift = 4 * (i % 2)
            c = code_bytes[i] if bits == 8 else (code_bytes[i // 2] >> shift) & 15
            position += ((index_bytes[i // 2] >> shift) & 15) + 1
            code[position] = c
        out[layer.name] = (codebook[code].reshape(layer.weight_shape), bias)
    assert stream.read() == b""
    return out


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype == np.float32 and a.shape == b.shape and a.tobytes() == b.tobytes()


def random_sparse(layer: ReleaseLayer, rng: np.random.Generator, density: float) -> SparseWeight:
    count = max(1, int(layer.weight_size * density))
    positions = np.sort(rng.choice(layer.weight_size, count, replace=False))
    codebook = np.concatenate([[0.0], np.sort(rng.standard_normal(2**layer.bits - 1))])
    codes = rng.integers(1, 2**layer.bits, count).astype(np.uint8)
    bias = rng.standard_normal(layer.bias_size)
    return SparseWeight(codebook.astype(np.float32), bias.astype(np.float32), positions, codes)


def expected_dense(layer: ReleaseLayer, w: SparseWeight) -> np.ndarray:
    dense = np.zeros(layer.weight_size, np.float32)
    dense[w.positions] = w.codebook[w.codes]
    return dense.reshape(layer.weight_shape)


@pytest.mark.parametrize("prototxt", [ALEXNET_LIKE, SQUEEZENET_FIRE], ids=["alexnet", "fire"])
def test_round_trip_is_exact(prototxt: str) -> None:
    rng = np.random.default_rng(0)
    layers = release_layers(parse(prototxt))
    densities = np.linspace(0.01, 0.6, len(layers))  # sparse layers force many fillers
    pairs = zip(layers, densities, strict=True)
    weights = {layer.name: random_sparse(layer, rng, d) for layer, d in pairs}
    data = encode_release(layers, weights)
    tensors = read_release(data, layers)
    reference = reference_decode(data, layers)
    assert [t.layer for t in tensors] == layers
    fillers = 0
    for t in tensors:
        w = weights[t.layer.name]
        real = t.codes != 0
        assert np.array_equal(t.positions[real], w.positions)
        assert np.array_equal(t.codes[real], w.codes)
        assert np.all(t.gaps[~real] == 15)
        assert t.codes.dtype == t.gaps.dtype == np.uint8
        assert same_bits(t.codebook, w.codebook) and same_bits(t.bias, w.bias)
        weight, bias = decode_dense(t)
        assert same_bits(weight, expected_dense(t.layer, w)) and same_bits(bias, w.bias)
        assert same_bits(weight, reference[t.layer.name][0])
        assert same_bits(bias, reference[t.layer.name][1])
        fillers += int((~real).sum())
    assert fillers > 100
    real = {t.layer.name: t.codes != 0 for t in tensors}
    again = {
        name: SparseWeight(t.codebook, t.bias, t.positions[real[name]], t.codes[real[name]])
        for name, t in zip(real, tensors, strict=True)
    }
    assert encode_release(layers, again) == data


# Two layers written out by hand: the byte layout pinned independently of the encoder.
GOLDEN_LAYERS = [ReleaseLayer("conv1", (2, 1, 3, 3), 2), ReleaseLayer("ip1", (2, 10), 2)]
GOLDEN_CONV = SparseWeight(
    np.arange(256, dtype=np.float32), np.array([0.5, -1.0], np.float32), [2, 3, 17], [200, 7, 255]
)
GOLDEN_IP = SparseWeight(
    np.arange(16, dtype=np.float32) / 4, np.array([2.0, 3.0], np.float32), [0, 17, 19], [3, 5, 1]
)
GOLDEN = (
    struct.pack("<2I", 3, 4)
    + np.arange(256, dtype="<f4").tobytes()
    + struct.pack("<2f", 0.5, -1.0)
    + bytes([200, 7, 255])  # conv codes: one byte each
    + bytes([0x02, 0x0D])  # gaps 2, 0 | 13, (pad)
    + (np.arange(16, dtype="<f4") / 4).tobytes()
    + struct.pack("<2f", 2.0, 3.0)
    + bytes([0x03, 0x15])  # codes 3, 0 (filler) | 5, 1
    + bytes([0xF0, 0x10])  # gaps 0, 15 (filler to position 16) | 0, 1
)


GOLDEN_PROTOTXT = """
input: "x" input_shape { dim: 1 dim: 1 dim: 7 dim: 3 }
layer { name: "conv1" type: "Convolution" bottom: "x" top: "conv1"
  convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "ip1" type: "InnerProduct" bottom: "conv1" top: "ip1"
  inner_product_param { num_output: 2 } }
"""


def test_golden_bytes() -> None:
    assert release_layers(parse(GOLDEN_PROTOTXT)) == GOLDEN_LAYERS
    data = encode_release(GOLDEN_LAYERS, {"conv1": GOLDEN_CONV, "ip1": GOLDEN_IP})
    assert data == GOLDEN
    conv, ip = read_release(GOLDEN, GOLDEN_LAYERS)
    assert conv.positions.tolist() == [2, 3, 17] and conv.codes.tolist() == [200, 7, 255]
    assert ip.positions.tolist() == [0, 16, 17, 19] and ip.codes.tolist() == [3, 0, 5, 1]
    assert ip.gaps.tolist() == [0, 15, 0, 1]
    assert (conv.offset, ip.offset) == (8, 8 + 1024 + 8 + 3 + 2)
    weight, bias = decode_dense(ip)
    expected = np.zeros(20, np.float32)
    expected[[0, 17, 19]] = [0.75, 1.25, 0.25]
    assert same_bits(weight, expected.reshape(2, 10))
    assert bias.tolist() == [2.0, 3.0]


@pytest.mark.parametrize(
    "zero", [0.5, -0.0, np.frombuffer(b"\x01\x00\xc0\x7f", "<f4")[0]], ids=["half", "neg0", "nan"]
)
def test_codebook_zero_not_zero_is_decoded_as_the_release_decoder_does(zero: float) -> None:
    codebook = GOLDEN_IP.codebook.copy()
    codebook[0] = zero
    weights = {"conv1": GOLDEN_CONV, "ip1": GOLDEN_IP._replace(codebook=codebook)}
    data = encode_release(GOLDEN_LAYERS, weights)
    weight, _ = decode_dense(read_release(data, GOLDEN_LAYERS)[1])
    # Filler and unwritten positions both carry codebook[0], payload bits included.
    assert same_bits(weight, reference_decode(data, GOLDEN_LAYERS)["ip1"][0])
    untouched = np.setdiff1d(np.arange(20), [0, 17, 19])
    assert weight.reshape(-1)[untouched].tobytes() == np.float32(zero).tobytes() * 17


def test_empty_layer() -> None:
    layers = [ReleaseLayer("fc", (3, 4), 3)]
    weights = {"fc": SparseWeight(np.zeros(16, np.float32), np.ones(3, np.float32), [], [])}
    data = encode_release(layers, weights)
    assert len(data) == 4 + 64 + 12  # no code or index bytes for zero entries
    (t,) = read_release(data, layers)
    assert t.codes.size == t.positions.size == 0
    weight, _ = decode_dense(t)
    assert same_bits(weight, np.zeros((3, 4), np.float32))


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["conv", "fc", "ip"]),
    st.tuples(st.integers(1, 6), st.integers(1, 40)),
    st.integers(0, 2**32 - 1),
    st.floats(0.0, 1.0),
)
def test_round_trip_property(name: str, shape: tuple, seed: int, density: float) -> None:
    rng = np.random.default_rng(seed)
    layer = ReleaseLayer(name, shape, shape[0])
    mask = rng.random(layer.weight_size) < density
    positions = np.flatnonzero(mask)
    codes = rng.integers(0, 2**layer.bits, positions.size)  # code 0 allowed for real entries
    codebook = rng.standard_normal(2**layer.bits).astype(np.float32)
    w = SparseWeight(codebook, rng.standard_normal(shape[0]).astype(np.float32), positions, codes)
    data = encode_release([layer], {name: w})
    (t,) = read_release(data, [layer])
    weight, _ = decode_dense(t)
    assert same_bits(weight, reference_decode(data, [layer])[name][0])
    entries = struct.unpack("<I", data[:4])[0]
    assert entries == t.codes.size >= positions.size
    code_bytes = entries if layer.bits == 8 else (entries + 1) // 2
    assert len(data) == 4 + 4 * (2**layer.bits + shape[0]) + code_bytes + (entries + 1) // 2


def _alexnet_file() -> tuple[list[ReleaseLayer], bytes]:
    rng = np.random.default_rng(1)
    layers = release_layers(parse(ALEXNET_LIKE))
    return layers, encode_release(layers, {la.name: random_sparse(la, rng, 0.1) for la in layers})


def test_truncated_header() -> None:
    layers, data = _alexnet_file()
    with pytest.raises(CaffeImportError, match=r"truncated header: 8 layers need 32 bytes, the "
                       r"file has 30 \(at byte offset 0\)"):  # fmt: skip
        read_release(data[:30], layers)


def test_missing_bytes_name_layer_section_and_offset() -> None:
    layers, data = _alexnet_file()
    tensors = read_release(data, layers)
    fc7 = tensors[6]
    entries = fc7.codes.size
    codes_at = fc7.offset + 4 * (16 + 64)
    index_at = codes_at + (entries + 1) // 2
    cases = [
        (fc7.offset + 10, "codebook", fc7.offset, 64),
        (fc7.offset + 64 + 1, "bias", fc7.offset + 64, 256),
        (codes_at + 5, "codes", codes_at, (entries + 1) // 2),
        (index_at, "indices", index_at, (entries + 1) // 2),
    ]
    for cut, section, offset, need in cases:
        pattern = (
            rf"layer 'fc7': {section} needs {need} bytes at byte offset {offset}, "
            rf"only {cut - offset} left"
        )
        with pytest.raises(CaffeImportError, match=pattern):
            read_release(data[:cut], layers)


def test_bytes_left_over() -> None:
    layers, data = _alexnet_file()
    with pytest.raises(
        CaffeImportError,
        match=rf"3 bytes left over at byte offset {len(data)}, after the last layer 'fc8'",
    ):
        read_release(data + b"abc", layers)


def test_entry_count_too_small_leaves_bytes_over() -> None:
    layers, data = _alexnet_file()
    header = np.frombuffer(data[:32], "<u4").copy()
    header[-1] -= 2  # fc8 then reads one code byte and one index byte less
    with pytest.raises(CaffeImportError, match=r"2 bytes left over at byte offset"):
        read_release(header.tobytes() + data[32:], layers)


def test_positions_past_the_end_of_the_weight() -> None:
    wide, narrow = ReleaseLayer("ip", (4, 8), 4), ReleaseLayer("ip", (4, 4), 4)
    positions = np.arange(0, 32, 3)  # 0, 3, ..., 30: entry 6 lands at 18 >= 16
    w = SparseWeight(np.zeros(16, np.float32), np.zeros(4, np.float32), positions, positions % 15)
    data = encode_release([wide], {"ip": w})
    index_at = 4 + 64 + 16 + 6  # header, codebook, bias, 11 codes in 6 bytes
    with pytest.raises(
        CaffeImportError,
        match=rf"layer 'ip': entry 6 of 11 lands at position 18, past the end of its "
        rf"16-element weight \(4, 4\) \(index byte offset {index_at + 3}\)",
    ):
        read_release(data, [narrow])


def test_file_for_another_net_is_rejected() -> None:
    _, data = _alexnet_file()
    other = ALEXNET_LIKE.replace("num_output: 64 }", "num_output: 65 }", 1)  # fc6 bias + 1
    with pytest.raises(CaffeImportError, match=r"layer 'fc\d'"):
        read_release(data, release_layers(parse(other)))


@pytest.mark.parametrize(
    ("weight", "message"),
    [
        (SparseWeight(np.zeros(8), np.zeros(2), [1], [1]), r"codebook \(8,\) / bias \(2,\)"),
        (SparseWeight(np.zeros(16), np.zeros(2), [3, 3], [1, 1]), "positions must increase"),
        (SparseWeight(np.zeros(16), np.zeros(2), [20], [1]), "positions must increase within"),
        (SparseWeight(np.zeros(16), np.zeros(2), [1], [16]), "codes out of range for 4 bits"),
        (SparseWeight(np.zeros(16), np.zeros(2), [1, 2], [1]), "codes and positions must"),
    ],
)
def test_encode_rejects_inconsistent_input(weight: SparseWeight, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_release([ReleaseLayer("ip1", (2, 10), 2)], {"ip1": weight})


def _peaked_sparse(layer: ReleaseLayer, rng: np.random.Generator, density: float) -> SparseWeight:
    """Like a trained layer: codes concentrated on the middle of a sorted codebook."""
    w = random_sparse(layer, rng, density)
    n = 2**layer.bits
    p = np.exp(-np.abs(np.arange(1, n) - n / 2) / (n / 10))
    return w._replace(codes=rng.choice(np.arange(1, n), w.codes.size, p=p / p.sum()))


def _convert(tmp_path, prototxt: str, weights: dict) -> tuple[list, bytes, dict, dict, int]:
    layers = release_layers(parse(prototxt))
    data = encode_release(layers, weights)
    (tmp_path / "net.prototxt").write_text(prototxt)
    (tmp_path / "model.net").write_bytes(data)
    model = read_net(tmp_path / "model.net", tmp_path / "net.prototxt")
    tensors = {w.name: compress_weight(w, SAFE) for w in model.weights()}
    with dcformat.Writer(tmp_path / "model.dcnn") as writer:
        for tensor in tensors.values():
            writer.add_encoded(tensor.encoded)
    loaded = dcformat.load_file(tmp_path / "model.dcnn")
    return layers, data, tensors, loaded, (tmp_path / "model.dcnn").stat().st_size


def _assert_loaded_matches_release(layers: list, data: bytes, loaded: dict) -> None:
    assert set(loaded) == {f"{la.name}.{kind}" for la in layers for kind in ("weight", "bias")}
    for t in read_release(data, layers):
        weight, bias = decode_dense(t)
        assert same_bits(loaded[f"{t.layer.name}.weight"], weight)
        assert same_bits(loaded[f"{t.layer.name}.bias"], bias)


@pytest.mark.parametrize("prototxt", [ALEXNET_LIKE, SQUEEZENET_FIRE], ids=["alexnet", "fire"])
def test_convert_to_dcnn_is_bit_exact_and_picks_the_smallest(tmp_path, prototxt: str) -> None:
    rng = np.random.default_rng(2)
    layers = release_layers(parse(prototxt))
    densities = np.linspace(0.05, 0.4, len(layers))
    weights = {la.name: _peaked_sparse(la, rng, d) for la, d in zip(layers, densities, strict=True)}
    layers, data, tensors, loaded, dcnn_size = _convert(tmp_path, prototxt, weights)
    _assert_loaded_matches_release(layers, data, loaded)
    with dcformat.safe_open(tmp_path / "model.dcnn") as f:
        for t in read_release(data, layers):
            name = f"{t.layer.name}.weight"
            codes = dense_codes(t)
            alternatives = [
                dcformat.Raw(t.codebook[codes]),
                dcformat.Quantized(t.codebook, codes, codes.shape),
            ]
            best = min(dcformat.encode(name, option).stored_bytes for option in alternatives)
            assert tensors[name].report.stored_bytes <= best  # measured before the writer set offsets
            if f.info(name).encoding == "SPARSE_CODES":  # fillers dropped
                assert np.array_equal(f.get_codes(name).positions, weights[t.layer.name].positions)
            assert f.info(f"{t.layer.name}.bias").encoding == "RAW"
        if prototxt is ALEXNET_LIKE:
            sparse = [f.info(f"{n}.weight").encoding == "SPARSE_CODES" for n in ("conv1", "conv2", "conv3")]
            assert all(sparse)
    if prototxt is ALEXNET_LIKE:
        assert dcnn_size < 0.9 * len(data)


@pytest.mark.parametrize(
    "zero", [0.5, -0.0, np.frombuffer(b"\x01\x00\xc0\x7f", "<f4")[0]], ids=["half", "neg0", "nan"]
)
def test_convert_codebook_zero_not_positive_zero_stays_exact(tmp_path, zero: float) -> None:
    codebook = GOLDEN_IP.codebook.copy()
    codebook[0] = zero
    weights = {"conv1": GOLDEN_CONV, "ip1": GOLDEN_IP._replace(codebook=codebook)}
    layers, data, tensors, loaded, _ = _convert(tmp_path, GOLDEN_PROTOTXT, weights)
    _assert_loaded_matches_release(layers, data, loaded)
    assert tensors["ip1.weight"].report.encoding != "SPARSE_CODES"


def test_convert_negative_zero_entry_stays_exact(tmp_path) -> None:
    codebook = GOLDEN_IP.codebook.copy()
    codebook[5] = -0.0  # used by the entry at position 17
    weights = {"conv1": GOLDEN_CONV, "ip1": GOLDEN_IP._replace(codebook=codebook)}
    layers, data, _, loaded, _ = _convert(tmp_path, GOLDEN_PROTOTXT, weights)
    _assert_loaded_matches_release(layers, data, loaded)
    assert np.signbit(loaded["ip1.weight"].reshape(-1)[17])


def test_convert_errors_name_the_file(tmp_path) -> None:
    _, data = _alexnet_file()
    (tmp_path / "net.prototxt").write_text(ALEXNET_LIKE)
    (tmp_path / "model.net").write_bytes(data[:-1])
    with pytest.raises(CaffeImportError, match=r"model\.net: layer 'fc8': indices needs"):
        read_net(tmp_path / "model.net", tmp_path / "net.prototxt")


def test_dcnn_convert_cli_imports_a_release_file(tmp_path, capsys) -> None:
    from converters.cli import convert_main

    layers = release_layers(parse(ALEXNET_LIKE))
    rng = np.random.default_rng(7)
    data = encode_release(layers, {la.name: _peaked_sparse(la, rng, 0.1) for la in layers})
    (tmp_path / "deploy.prototxt").write_text(ALEXNET_LIKE)
    (tmp_path / "model.net").write_bytes(data)
    out = tmp_path / "model.dcnn"
    assert convert_main([str(tmp_path / "model.net"), "-o", str(out)]) == 2
    assert "--prototxt" in capsys.readouterr().err
    args = [str(tmp_path / "model.net"), "--prototxt", str(tmp_path / "deploy.prototxt"), "-o", str(out)]
    assert convert_main(args) == 0
    _assert_loaded_matches_release(layers, data, dcformat.load_file(out))
    with dcformat.safe_open(out) as f:
        assert f.source().format == "caffe-release"
        assert f.source().skeleton.decode() == ALEXNET_LIKE
    (tmp_path / "model.net").write_bytes(data[:-3])  # disagrees with the prototxt: clear error
    assert convert_main([*args, "--force"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dcnn-convert: error:") and "\n" not in err.strip()
    assert dcformat.load_file(out)  # the earlier output is intact
