"""Weight sharing by row use (lookup tables): precision follows the counts, size stays that of plain
sharing, and deep_compress takes the counts through to the file."""

import numpy as np
import pytest
import torch
from torch import nn

import dcformat
from converters.compress import CompressionConfig, LayerRule, Stage, deep_compress
from converters.compress.finetune import row_magnitudes, scaled_sharing
from converters.compress.row_usage import HALF_LEVELS, _entropy, usage_sharing
from converters.compress.share import share_weights


def table(rows: int = 3000, width: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A float32 table with rows of assorted magnitudes and heavy tails, and Zipf-like row counts
    (a third of the rows never used)."""
    rng = np.random.default_rng(seed)
    values = rng.standard_t(5, size=(rows, width)) * rng.uniform(0.02, 0.1, size=(rows, 1))
    counts = np.floor(2000 / (1 + rng.permutation(rows)) ** 1.1).astype(np.int64)
    counts[rng.random(rows) < 0.33] = 0
    return values.astype(np.float32), counts


def row_errors(values: np.ndarray, shared, scales: np.ndarray) -> np.ndarray:
    """Each row's mean squared error over its mean square."""
    decoded = shared.decode().reshape(values.shape) * scales.astype(np.float32)[:, None]
    return np.mean((decoded - values) ** 2, axis=1) / row_magnitudes(values, len(values)) ** 2


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_codes_cost_what_plain_sharing_costs(bits: int) -> None:
    values, counts = table()
    shared, _ = usage_sharing(values.reshape(-1), len(values), bits, counts)
    normalized = values / row_magnitudes(values, len(values))[:, None]
    plain = share_weights(normalized.reshape(-1), bits)
    assert _entropy(shared.codes.astype(np.int64)) == pytest.approx(
        _entropy(plain.codes.astype(np.int64)), abs=0.03
    )


def test_rows_used_more_are_more_precise_and_unused_rows_keep_plain_quality() -> None:
    values, counts = table()
    shared, scales = usage_sharing(values.reshape(-1), len(values), 3, counts)
    error = row_errors(values, shared, scales)
    plain_shared, plain_scales = scaled_sharing(values.reshape(-1), len(values), 3)
    plain = row_errors(values, plain_shared, plain_scales)
    frequent = counts >= np.quantile(counts[counts > 0], 0.9)
    assert error[frequent].mean() < 0.3 * error[counts == 0].mean()
    assert error[counts == 0].mean() < 1.2 * plain.mean()  # the cap: no coarser than plain sharing
    # what it is for: the error of the rows looked up, weighed by use, at plain sharing's size
    assert (counts * error).sum() < 0.5 * (counts * plain).sum()


def test_codebook_codes_and_scales_fit_the_format() -> None:
    values, counts = table(rows=500)
    values[7, 3] = 40.0  # an outlier: its row's step grows so that it fits the codebook
    shared, scales = usage_sharing(values.reshape(-1), len(values), 3, counts)
    assert shared.codes.dtype == np.uint8 and len(shared.codebook) <= 2 * HALF_LEVELS + 1
    assert shared.codebook.dtype == np.float32 and not shared.zero_symbol
    unit = np.diff(shared.codebook).min()  # a uniform grid (its unused values dropped), scaled per row
    assert np.allclose(shared.codebook / unit, np.rint(shared.codebook / unit), atol=1e-3)
    assert scales.dtype == np.float16 and (scales > 0).all() and np.isfinite(scales).all()
    decoded = shared.decode().reshape(values.shape) * scales.astype(np.float32)[:, None]
    half_step = unit * scales.astype(np.float32)[:, None] / 2
    assert (np.abs(decoded - values) <= half_step * 1.001 + 1e-7).all()  # each weight on its nearest level


@pytest.mark.parametrize(
    "counts", [np.ones(99), -np.ones(100), np.full(100, np.nan), np.ones((100, 1, 2))], ids=str
)
def test_bad_counts_are_refused(counts: np.ndarray) -> None:
    values, _ = table(rows=100)
    with pytest.raises(ValueError, match="row counts"):
        usage_sharing(values.reshape(-1), 100, 3, counts)


class Lookup(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(400, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens).mean(1))


CONFIG = CompressionConfig(fc_bits=3, min_size=64, rules=(LayerRule("embed.weight", bits=3),))


def test_deep_compress_shares_the_named_table_by_use(tmp_path) -> None:
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, 40, (64, 6), generator=gen)  # only the first 40 tokens occur
    counts = np.bincount(tokens.reshape(-1).numpy(), minlength=400)

    def train(model: nn.Module, stage: Stage) -> None:  # a step that changes nothing: sharing alone
        opt = torch.optim.Adam(stage.parameters, lr=0.0)
        opt.zero_grad()
        nn.functional.mse_loss(model(tokens), stage.teacher(tokens)).backward()
        opt.step()

    model = Lookup()
    table = model.embed.weight.detach().clone().numpy()
    result = deep_compress(
        model, train, config=CONFIG, distill=True, reassign=True, row_scales=True,
        row_counts={"embed.weight": counts}, progress=False,
    )  # fmt: skip
    result.save(tmp_path / "m.dcnn")
    with dcformat.safe_open(tmp_path / "m.dcnn") as f:
        codes = f.get_codes("embed.weight")
        decoded = f.get_tensor("embed.weight")
    assert codes.scales is not None and codes.scales.shape == (400,)
    assert len(codes.codebook) > 2**3  # a uniform codebook, not 2**bits centroids
    _, scales = usage_sharing(table.reshape(-1), 400, 3, counts)
    assert np.array_equal(codes.scales, scales)  # the table was shared by use
    error = np.mean((decoded - table) ** 2, axis=1)
    assert error[:40].mean() < 0.75 * error[40:].mean()  # the rows in use are the precise ones
    assert np.array_equal(decoded, model.embed.weight.detach().numpy())


def test_row_counts_need_row_scales_and_a_known_unpruned_table() -> None:
    counts = np.ones(400)

    def train(model: nn.Module, stage: Stage) -> None:
        pass

    with pytest.raises(ValueError, match="row_scales"):
        deep_compress(Lookup(), train, config=CONFIG, row_counts={"embed.weight": counts}, progress=False)
    for name, config in (
        ("head.weight", CONFIG),  # not compressed: below min_size
        (
            "embed.weight",
            CompressionConfig(fc_bits=3, min_size=64, rules=(LayerRule("embed", sparsity=0.5),)),
        ),
    ):
        with pytest.raises(ValueError, match="row counts need"):
            deep_compress(
                Lookup(), train, config=config, row_scales=True, row_counts={name: counts}, progress=False
            )
