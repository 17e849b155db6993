"""all-MiniLM-L6-v2 compressed with retraining: the paper's recipe on a transformer (issue 13).

    python benchmarks/minilm_retrain.py --out DIR

``converters.deep_compress`` prunes the encoder's linear layers (magnitude, in rounds, each
followed by retraining with the masks held), shares weights by k-means (the word embedding
table, the encoder and the rest at their own bits) and fine-tunes the centroids, LayerNorms
and biases, then Huffman-codes the result into ``DIR/minilm.dcnn`` (tensor names as in
``model.safetensors``). Trained quantization re-assigns codes as it trains (``reassign``:
each weight follows a full-precision shadow to its nearest centroid); ``--fixed-codes``
trains the centroids alone, as the paper does. ``--row-scales`` makes each weight its
centroid times a float16 scale of its row, the scales trained with the centroids. Every stage
distills from the dense model, with dropout off: the loss sums, over the embedding output and
every layer, the student's token states' mean squared error to the teacher's (scaled by their
variance), plus ten times one minus the cosine of the mean-pooled sentence embeddings.

Training text is English from the docstrings of TRAIN_MODULES (numpy, torch and the standard
library) and Python's reference documentation; ``--corpus packages`` takes the docstrings of
every installed package and standard-library module instead (about 150,000 sentences, each
seen at most once); ``--wordnet`` adds WordNet's 35,000 usage examples (everyday English;
Debian's wordnet-base). The sentences scored are held out: docstrings of other standard-library
modules (``zoo_models.EVAL_MODULES``, never trained on) and ``examples.minilm.SENTENCES``
(everyday English, a different domain). The scores are those of the written file, decoded
and loaded into sentence-transformers.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: F401  (puts the checkout on sys.path)
from zoo_models import CALIBRATION_MODULES, EVAL_MODULES, doc_sentences, english_sentences

from examples.minilm import SENTENCES

# Training text: docstrings of these modules (none of EVAL_MODULES or CALIBRATION_MODULES).
TRAIN_MODULES = (
    "os", "re", "typing", "inspect", "functools", "itertools", "dataclasses", "enum", "string",
    "textwrap", "csv", "sqlite3", "socket", "threading", "multiprocessing.pool",
    "concurrent.futures", "decimal", "fractions", "statistics", "random", "datetime", "calendar",
    "heapq", "bisect", "copy", "pickle", "io", "glob", "fnmatch", "tempfile", "urllib.request",
    "urllib.parse", "xml.etree.ElementTree", "html.parser", "configparser", "optparse", "pdb",
    "doctest", "ast", "dis", "tokenize", "codecs", "locale", "gettext", "hashlib", "hmac",
    "secrets", "uuid", "queue", "sched", "selectors", "signal", "ctypes", "contextlib", "abc",
    "numbers", "operator", "weakref", "types", "pprint", "reprlib", "difflib", "gzip", "bz2",
    "lzma", "base64", "struct", "ipaddress", "smtplib", "imaplib", "ftplib", "poplib", "mailbox",
    "wave", "colorsys", "sysconfig", "platform", "traceback", "warnings", "timeit", "cProfile",
    "trace", "importlib", "pkgutil", "runpy", "numpy", "numpy.linalg", "numpy.fft",
    "numpy.random", "numpy.ma", "numpy.polynomial.polynomial", "torch", "torch.nn.modules.linear",
    "torch.nn.modules.conv", "torch.nn.modules.activation", "torch.nn.modules.loss",
    "torch.nn.functional", "torch.optim", "torch.utils.data", "torch.autograd",
    "torch.nn.modules.rnn", "torch.nn.modules.transformer", "torch.nn.modules.normalization",
    "torch.nn.modules.pooling", "torch.distributions.normal", "torch.fft", "torch.linalg",
)  # fmt: skip


WORDNET = Path("/usr/share/wordnet")  # Debian's wordnet-base: glosses with usage examples


def wordnet_examples() -> list[str]:
    """The usage examples of WordNet's glosses (everyday English, 48,000 phrases) of four words
    or more, capitalized. A missing wordnet-base is a one-line exit."""
    if not (WORDNET / "data.noun").is_file():
        raise SystemExit(f"--wordnet needs WordNet's data in {WORDNET}: apt install wordnet-base")
    found = []
    for part in ("noun", "verb", "adj", "adv"):
        for line in (WORDNET / f"data.{part}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:  # the license header; glossless lines
                continue
            for example in re.findall(r'"([^"]+)"', line.split("|", 1)[1]):
                if len(example.split()) >= 4:
                    found.append(example[0].upper() + example[1:])
    return found


DOCSTRING = re.compile(r'"""(.*?)"""|\'\'\'(.*?)\'\'\'', re.S)


def package_sentences(excluded: tuple[str, ...]) -> list[str]:
    """English sentences from the triple-quoted strings (docstrings, almost all) of every
    Python file of the standard library and the installed packages, except the files of the
    ``excluded`` standard-library modules (a package's whole folder)."""
    import sysconfig

    paths = sysconfig.get_paths()
    stdlib = Path(paths["stdlib"])
    skip = [stdlib / (name.split(".")[0] + ".py") for name in excluded]
    skip += [stdlib / name.split(".")[0] for name in excluded]
    found: set[str] = set()
    for root in sorted({stdlib, Path(paths["purelib"]), Path(paths["platlib"])}):
        for path in sorted(root.rglob("*.py")):
            if any(path == s or s in path.parents for s in skip):
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            for match in DOCSTRING.finditer(text):
                found.update(english_sentences(match.group(1) or match.group(2) or ""))
    return sorted(found)


def training_sentences(exclude: set[str], wordnet: bool = False, packages: bool = False) -> list[str]:
    """English sentences from the docstrings of TRAIN_MODULES and from Python's reference
    documentation (``pydoc_data``); with ``packages`` from every installed package's and
    standard-library module's docstrings but those of EVAL_MODULES and CALIBRATION_MODULES;
    with ``wordnet`` WordNet's usage examples too; none of them in ``exclude``."""
    from pydoc_data.topics import topics

    assert not set(TRAIN_MODULES) & set(EVAL_MODULES + CALIBRATION_MODULES)
    found = [sentence for text in topics.values() for sentence in english_sentences(text)]
    for name in TRAIN_MODULES:
        try:
            found += doc_sentences((name,), 1_000_000)
        except ImportError:  # a module this Python lacks (e.g. built without sqlite3)
            continue
    if packages:
        found += package_sentences(EVAL_MODULES + CALIBRATION_MODULES)
    if wordnet:
        found += wordnet_examples()
    # every sentence of EVAL_MODULES' docstrings, not only the ones scored: a few recur elsewhere
    return sorted(set(found) - exclude - set(doc_sentences(EVAL_MODULES, 1_000_000)))


TRAIN_SCORED = 300  # training sentences scored beside the held-out ones


def held_out_sentences() -> list[str]:
    """Docstrings of other modules, then the everyday English of ``SENTENCES``."""
    return doc_sentences(EVAL_MODULES, 64) + list(SENTENCES)


def bits_rule(text: str) -> object:
    """``PATTERN=BITS`` as a LayerRule (an argparse type: a bad one is a usage error)."""
    from converters.compress.config import LayerRule

    pattern, _, bits = text.rpartition("=")
    try:
        return LayerRule(pattern, bits=int(bits))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: expected PATTERN=BITS ({error})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for minilm.dcnn")
    parser.add_argument("--model-dir", type=Path, help="the MiniLM folder (default: the bundled one)")
    parser.add_argument("--sparsity", type=float, default=0.1, help="encoder linear layers (0.1)")
    parser.add_argument("--prune-rounds", type=int, default=1)
    parser.add_argument("--bits", type=int, default=4, help="encoder and other layers (4)")
    parser.add_argument("--embedding-bits", type=int, default=3, help="word embedding table (3)")
    parser.add_argument("--ffn-out-bits", type=int, help="feed-forward output layers (default: --bits)")
    parser.add_argument(
        "--bits-for",
        action="append",
        default=[],
        metavar="PATTERN=BITS",
        type=bits_rule,
        help="bits of the layers a pattern matches, e.g. 'encoder.layer.*.attention.self.query=4'",
    )
    parser.add_argument(
        "--fewer-bits",
        type=float,
        metavar="MAX_INCREASE",
        help="fewer bits on the tensors where it costs least per byte saved, measured before "
        "training as 1 - mean cosine on training sentences, while the increases add up to at most "
        "this (converters.compress.sensitivity)",
    )
    parser.add_argument(
        "--down-by",
        type=int,
        default=1,
        metavar="N",
        help="with --fewer-bits: measure each tensor at 1 to N bits fewer (1)",
    )
    parser.add_argument("--prune-steps", type=int, default=300, help="optimizer steps per pruning round")
    parser.add_argument("--quantize-steps", type=int, default=300, help="trained quantization steps")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam rate of the pruning rounds")
    parser.add_argument("--quantize-lr", type=float, default=1e-4, help="Adam rate of fine-tuning")
    parser.add_argument(
        "--fixed-codes", action="store_true", help="train the centroids only (the paper), not reassign"
    )
    parser.add_argument(
        "--row-scales",
        action="store_true",
        help="codebook value times a trained float16 scale per row (format 1.1 scales)",
    )
    parser.add_argument(
        "--token-counts",
        action="store_true",
        help="word embedding rows as precise as their tokens are common in the training text (--row-scales)",
    )
    parser.add_argument(
        "--wordnet", action="store_true", help="train on WordNet's usage examples too (apt wordnet-base)"
    )
    parser.add_argument(
        "--corpus",
        choices=("modules", "packages"),
        default="modules",
        help="training docstrings: TRAIN_MODULES', or every installed package's (about 150,000 sentences)",
    )
    parser.add_argument("--checkpoint-dir", type=Path, help="save each stage there; resume from it")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F
    from sentence_transformers import SentenceTransformer
    from tqdm.auto import tqdm

    import dcformat
    from converters import CompressionConfig, deep_compress
    from converters.compress.config import LayerRule
    from converters.compress.retrain import RetrainStage, Stage
    from converters.compress.tensor import compress_weight
    from converters.weight import as_weight
    from examples.minilm import model_dir

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    folder = args.model_dir or model_dir()
    source = folder / "model.safetensors"
    st = SentenceTransformer(str(folder), device="cpu")
    st.eval()
    bert = st[0].auto_model
    original = {k: v.clone() for k, v in bert.state_dict().items()}
    held_out = held_out_sentences()
    reference = st.encode(held_out, normalize_embeddings=True, batch_size=64)
    train_text = training_sentences(set(held_out), args.wordnet, args.corpus == "packages")
    print(f"{len(train_text)} training sentences, {len(held_out)} held-out sentences")
    # a sample of the training text, scored like the held-out sentences: fit against generalization
    train_sample = random.Random(args.seed + 1).sample(train_text, min(TRAIN_SCORED, len(train_text)))
    train_reference = st.encode(train_sample, normalize_embeddings=True, batch_size=64)

    device = torch.device(args.device)
    student = copy.deepcopy(bert).to(device)

    def tokens(texts: list[str]) -> dict[str, torch.Tensor]:
        features = st.tokenize(texts)
        return {k: v.to(device) for k, v in features.items() if isinstance(v, torch.Tensor)}

    held_features = tokens(held_out)

    def pooled(model: torch.nn.Module, features: dict) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Every layer's token states, and the normalized mean-pooled sentence embedding."""
        states = model(**features, output_hidden_states=True).hidden_states
        mask = features["attention_mask"].unsqueeze(-1).to(states[-1].dtype)
        return states, F.normalize((states[-1] * mask).sum(1) / mask.sum(1), dim=-1)

    @torch.no_grad()
    def held_out_cosine(model: torch.nn.Module) -> float:
        was = model.training
        model.eval()
        _, emb = pooled(model, held_features)
        model.train(was)
        return float((emb.cpu() * torch.from_numpy(reference)).sum(1).mean())

    rng = random.Random(args.seed)

    def batches() -> Iterator[dict]:
        while True:
            order = list(train_text)
            rng.shuffle(order)
            for i in range(0, len(order) - args.batch + 1, args.batch):
                yield tokens(order[i : i + args.batch])

    stream = batches()

    def train(model: torch.nn.Module, stage: RetrainStage) -> None:
        """Distillation from the dense model (``stage.teacher``) with Adam, cosine-decayed."""
        assert isinstance(stage, Stage) and stage.teacher is not None
        steps = args.prune_steps if stage.kind == "prune" else args.quantize_steps
        lr = args.lr if stage.kind == "prune" else args.quantize_lr
        opt = torch.optim.Adam(stage.parameters, lr=lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + np.cos(np.pi * i / steps)))
        model.eval()  # no dropout: the student is to reproduce the teacher's outputs exactly
        bar = tqdm(range(steps), desc=stage.name, leave=False, mininterval=5)
        for _ in bar:
            features = next(stream)
            with torch.no_grad():
                t_states, t_emb = pooled(stage.teacher, features)
            s_states, s_emb = pooled(model, features)
            mask = features["attention_mask"].unsqueeze(-1).to(s_emb.dtype)
            mse = sum(
                (((s - t) ** 2) * mask).sum() / (mask.sum() * s.shape[-1] * t.var())
                for s, t in zip(s_states, t_states, strict=True)
            )
            loss = mse + (1 - (s_emb * t_emb).sum(1)).mean() * 10
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.4f}")

    ffn_out = "encoder.layer.[0-9].output.dense"  # not attention.output.dense
    config = CompressionConfig(
        fc_bits=args.bits,
        prune_steps=args.prune_rounds,
        rules=(
            LayerRule("embeddings.word_embeddings", bits=args.embedding_bits),
            LayerRule("encoder.layer.*", sparsity=args.sparsity or None),
            *([LayerRule(ffn_out, bits=args.ffn_out_bits)] if args.ffn_out_bits else []),
            *args.bits_for,
        ),
    )
    row_counts = None
    if args.token_counts:  # each vocabulary entry's count in the training text
        ids = st.tokenizer(train_text, truncation=True, max_length=256)["input_ids"]
        counts = np.bincount(np.concatenate(ids), minlength=bert.config.vocab_size)
        row_counts = {"embeddings.word_embeddings.weight": counts}
        print(f"{np.count_nonzero(counts):,} of {counts.size:,} tokens occur in the training text")
    if args.fewer_bits is not None:
        from converters.compress.sensitivity import measure_sensitivity

        sample_features = tokens(train_sample)

        @torch.no_grad()
        def train_error(model: torch.nn.Module) -> float:
            model.eval()
            _, emb = pooled(model, sample_features)
            return 1 - float((emb.cpu() * torch.from_numpy(train_reference)).sum(1).mean())

        measured = measure_sensitivity(
            student,
            train_error,
            config,
            down_by=args.down_by,
            row_scales=args.row_scales,
            row_counts=row_counts,
        )
        fewer = measured.fewer_bits(args.fewer_bits)
        print(
            f"sensitivity: error {measured.error:.4f} before training at the config's bits; fewer bits "
            f"for {len(fewer)} tensors, at the bits marked *; measurements cheapest per byte first:"
        )
        chosen = {
            (t.name, t.bits)
            for t in measured.tensors
            for r in fewer
            if fnmatchcase(t.name, r.pattern) and t.bits == r.bits
        }
        print(f"    {'tensor':<48} {'bits':>4} {'saved B':>9} {'increase':>9}")
        for t in sorted(measured.tensors, key=lambda t: t.increase / max(t.saved_bytes, 1)):
            mark = "*" if (t.name, t.bits) in chosen else " "
            print(f"  {mark} {t.name:<48} {t.bits:>4} {t.saved_bytes:>9,} {t.increase:>9.5f}")
        config = replace(config, rules=config.rules + tuple(fewer))
    result = deep_compress(
        student,
        train,
        held_out_cosine,
        config,
        distill=True,
        reassign=not args.fixed_codes,
        row_scales=args.row_scales,
        row_counts=row_counts,
        checkpoint_dir=args.checkpoint_dir,
    )
    # Tensors of the file that the module does not hold (position_ids) are stored exactly.
    from safetensors.numpy import load_file

    names = {t.report.name for t in result.tensors}
    for name, value in load_file(source).items():
        if name not in names:
            result.tensors.append(compress_weight(as_weight(name, value), config))
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "minilm.dcnn"
    size = result.save(target)
    minutes = (time.perf_counter() - started) / 60

    decoded = dcformat.load_file(target)
    bert.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in decoded.items()}, strict=False)
    cos = (st.encode(held_out, normalize_embeddings=True, batch_size=64) * reference).sum(1)
    fit = (st.encode(train_sample, normalize_embeddings=True, batch_size=64) * train_reference).sum(1)
    bert.load_state_dict(original)

    groups: dict[str, list] = {}
    for row in result.report.tensors:
        if row.weight_bits is None:
            continue
        kind = (
            "word embeddings" if "word_embeddings" in row.name
            else "attention q/k/v" if ".attention.self." in row.name
            else "attention output" if ".attention.output." in row.name
            else "feed-forward in" if ".intermediate." in row.name
            else "feed-forward out" if ".output.dense" in row.name
            else "other"
        )  # fmt: skip
        groups.setdefault(kind, []).append(row)
    header = f"{'layer type':18} {'tensors':>7} {'weights':>10} {'sparsity':>9} {'bits':>5}"
    print(f"\n{header} {'bits/weight':>12}")
    for kind, rows in groups.items():
        weights = sum(r.numel for r in rows)
        nonzero = sum(r.nonzeros for r in rows)
        stored = sum(r.stored_bytes for r in rows)
        bits = sorted({r.weight_bits for r in rows})
        print(
            f"{kind:18} {len(rows):>7} {weights:>10,} {1 - nonzero / weights:>9.1%} "
            f"{'/'.join(map(str, bits)):>5} {8 * stored / weights:>12.2f}"
        )
    for stage, value in result.report.metrics.items():
        print(f"held-out cosine after {stage:11}: {value:.4f}")
    everyday = len(held_out) - len(SENTENCES)
    print(
        f"held-out cosine of the written file: docstrings of other modules {cos[:everyday].mean():.4f} "
        f"(min {cos[:everyday].min():.4f}), everyday English {cos[everyday:].mean():.4f} "
        f"(min {cos[everyday:].min():.4f})"
    )
    print(
        f"cosine of the written file on {len(train_sample)} training sentences (what it fits): "
        f"mean {fit.mean():.4f}, min {fit.min():.4f}"
    )
    ratio = source.stat().st_size / size
    print(
        f"\n{source.stat().st_size:,} bytes of model.safetensors -> {size:,} bytes ({ratio:.2f}x) "
        f"in {minutes:.1f} min; held-out sentence cosine of the written file: mean "
        f"{cos.mean():.4f}, min {cos.min():.4f} ({len(held_out)} sentences)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
