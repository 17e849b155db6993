"""Compression settings: command-line options, TOML config files, per-tensor plans."""

from __future__ import annotations

import numpy as np
import pytest

from converters.compress.config import PAPER, SAFE, CompressionConfig, LayerRule, apply_options, load_config
from converters.compress.tensor import plan_for
from converters.errors import ConvertError
from converters.weight import Weight
from dcformat import DcnnError


def weight(name: str, shape: tuple[int, ...], dtype: str = "float32", layer: str | None = None) -> Weight:
    array = np.zeros(shape, dtype=np.uint16 if dtype == "bfloat16" else dtype)
    return Weight(name, array, dtype, layer)  # type: ignore[arg-type]


def test_safe_default_is_8_bits_everywhere_without_pruning() -> None:
    for shape in [(64, 64), (16, 8, 3, 3)]:
        plan = plan_for(SAFE, weight("w", shape))
        assert plan is not None and plan.bits == 8 and not plan.prunes and plan.init == "density"


def test_paper_defaults_tell_conv_from_fc() -> None:
    assert plan_for(PAPER, weight("conv.weight", (16, 8, 3, 3))).bits == 8
    assert plan_for(PAPER, weight("fc.weight", (64, 64))).bits == 5


def test_small_and_integer_and_rank1_tensors_are_stored_exactly() -> None:
    assert plan_for(SAFE, weight("bias", (4096,))) is None
    assert plan_for(SAFE, weight("small", (8, 8))) is None
    assert plan_for(SAFE, weight("ids", (64, 64), "int64")) is None
    assert plan_for(SAFE, weight("bf", (64, 64), "bfloat16")) is not None


def test_options_apply_in_order_and_patterns_beat_the_default() -> None:
    config = apply_options(
        SAFE,
        [
            ("bits", "encoder.*=6"),
            ("bits", "4"),
            ("prune", "fc*=90%"),
            ("exclude", "emb.*"),
            ("prune", "0.25"),
        ],
    )
    assert (config.conv_bits, config.fc_bits) == (4, 4)
    assert plan_for(config, weight("encoder.l0.weight", (64, 64))).bits == 6
    assert plan_for(config, weight("decoder.weight", (64, 64))).bits == 4
    assert plan_for(config, weight("fc1.weight", (64, 64))).sparsity == 0.25  # the later '*' rule wins
    assert plan_for(config, weight("emb.weight", (64, 64))) is None
    only_fc = apply_options(SAFE, [("prune", "fc*=90%")])
    assert plan_for(only_fc, weight("fc1.weight", (64, 64))).sparsity == pytest.approx(0.9)
    assert not plan_for(only_fc, weight("other.weight", (64, 64))).prunes


def test_include_compresses_what_the_default_would_not() -> None:
    config = apply_options(SAFE, [("include", "bias*")], min_size=16)
    assert plan_for(config, weight("bias.x", (64,))) is not None
    assert plan_for(config, weight("other", (64,))) is None
    with pytest.raises(ConvertError, match="not floating point") as info:
        plan_for(apply_options(SAFE, [("include", "ids")]), weight("ids", (64, 64), "int32"))
    assert info.value.rule == "usage"


@pytest.mark.parametrize(
    ("option", "text"),
    [
        ("bits", "x=abc"),
        ("bits", "17"),
        ("bits", "0"),
        ("prune", "fc=1.0"),
        ("prune", "fc=-0.1"),
        ("prune", "lots"),
    ],
)
def test_bad_option_values_are_usage_errors(option: str, text: str) -> None:
    with pytest.raises(ConvertError) as info:
        apply_options(SAFE, [(option, text)])
    assert info.value.rule == "usage" and isinstance(info.value, DcnnError)


def test_graph_layer_type_beats_shape_unless_a_rule_sets_bits() -> None:
    batched = weight("w", (4, 64, 64), layer="fc")  # rank 3 but used as fully connected
    assert plan_for(PAPER, batched).bits == PAPER.fc_bits
    ruled = apply_options(PAPER, [("bits", "w=7")])
    assert plan_for(ruled, batched).bits == 7


def test_toml_config(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('fc_bits = 6\ninit = "linear"\n[rules."enc*"]\nbits = 3\nsparsity = 0.5\n')
    config = load_config(path)
    assert config == CompressionConfig(
        fc_bits=6, init="linear", rules=(LayerRule("enc*", bits=3, sparsity=0.5),)
    )
    merged = apply_options(config, [("bits", "enc*=4")])
    plan = plan_for(merged, weight("enc.weight", (64, 64)))
    assert (plan.bits, plan.sparsity) == (4, 0.5)


@pytest.mark.parametrize(
    ("text", "match"),
    [("fc_bits = [", "not a valid TOML"), ("colour = 3", "unknown config key"), ("fc_bits = 99", "bits")],
)
def test_bad_config_files_are_usage_errors(tmp_path, text: str, match: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConvertError, match=match) as info:
        load_config(path)
    assert info.value.rule == "usage"


def test_missing_config_file(tmp_path) -> None:
    with pytest.raises(DcnnError, match="no such file"):
        load_config(tmp_path / "none.toml")
