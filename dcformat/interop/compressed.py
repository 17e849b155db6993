"""Torch modules that compute on the compressed form of coded weights, never expanded to dense.

``dcformat.interop.torch.load_into(module, path, compressed=True)`` calls :func:`replace_coded`: each
``nn.Linear`` and 1x1 ``nn.Conv2d`` whose weight the file stores coded is replaced by

* :class:`SparseCodedLinear` / :class:`SparseCodedConv2d`: CSR row pointers, uint16 (or
  uint32) column indices and uint8 codes, the codebook looked up in the kernel's inner loop;
* :class:`LutCodedLinear`: one uint8 code per weight (dense codes, no index);

or left dense, whichever :func:`choose` predicts fastest for batches up to ``max_batch``; where
the prediction is too close to call (:func:`contender`), whichever runs faster when both are timed
on this machine as the layer is built. The compressed form lives in registered buffers, so
``.to()``, ``state_dict()`` and memory accounting see it. Inference only: the outputs carry no
gradient. On CPU with float32 inputs the native kernels of :mod:`dcformat.matvec` compute;
elsewhere a torch fallback does.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Collection
from typing import Any

import numpy as np
import torch
from torch import nn

from ..codec import matvec
from ..errors import DcnnError, FormatError
from ..file.reader import DcnnFile
from ..tensors import Codes

SPARSE, LUT, DENSE = "sparse", "lut", "dense"
_SPARSE_BUFFERS = ("indptr", "cols", "codes", "codebook")
MAX_THREADS = 64  # the native kernels' pool
MAX_BATCH = 16  # the batch range load_into(compressed=True) chooses for

# The cost model of choose(), from `python benchmarks/matvec.py --sweep` (random matrices of
# other shapes than the table's, one thread): nanoseconds per stored entry (sparse) or weight
# (dense, LUT) at batch b, and per call. Sparse runs a gather kernel at batch 1.
_CALL_NS = {SPARSE: 8000.0, LUT: 8000.0, DENSE: 8000.0}
MIN_WEIGHTS = 1 << 16  # below this a layer stays dense: a few us of compute cannot pay the call
# Below this the dense weight is cache-resident and runs several times faster per weight than the
# model's fit (LeNet-300-100's fc1, 235,200 weights: 0.035 ns against 0.2): such a layer is timed
# (contender) where at most SMALL_MAX_DENSITY of it is stored, and otherwise stays dense.
CACHE_WEIGHTS = 1 << 18
SMALL_MAX_DENSITY = 0.15
MARGIN = 0.85  # a compressed form must be predicted this much faster than dense to be chosen
# Predicted compressed/dense time ratios inside this band are timed instead of trusted. The model,
# fitted at one thread on matrices of other shapes, erred by up to 2.3x, always in dense's favour
# (AlexNet's fc8 at 2 threads: predicted 0.57, ran 1.14 to 1.35; dense ran 0.08 ns per weight
# against the fitted 0.2): below 0.4 the compressed form wins even so; the top keeps the layers
# the model calls dense by a small margin.
BAND = (0.4, 1.25)
TIMED_BATCHES = (1, 4, 16)  # the batches (up to max_batch, and max_batch) timed for a close call
TIMED_ROUNDS = 15  # interleaved rounds; the best of each form and batch counts
# Before the rounds both forms run, in turn, for this long: a load's first products run cold
# (clock, caches, torch's threads). Without it LeNet-300-100's fc1 timed 1.1-1.3x dense at
# batch 1 in 10 of 18 loads in one process on a 2-core machine and went dense; with 5 ms, in
# none of 18.
TIMED_WARMUP_S = 0.01
# ... and the compressed form is kept where it loses least where it loses: its worst ratio to
# dense's time over the batch range, times its best one, is at most TIMED_MARGIN (that is, its
# worst slowdown is at most TIMED_MARGIN times dense's worst slowdown against it). A layer a few
# percent slower at batch 1 and far faster at 16 is kept (dense would lose more at 16 than the
# compressed form loses at 1); a tie everywhere stays dense. On a 2-core virtual machine the
# same layer's batch-1 ratio moved between two levels for hundreds of milliseconds at a time
# (LeNet-300-100's fc1: 0.8-0.95, or 1.05-1.17 with 0.85-0.94 at 4 and 0.6-0.8 at 16, where
# torch's spinning OpenMP worker and the kernel's thread contended): the second level, as
# likely at load time as the first, must not send the layer dense (in sequence with the dense
# layers around it the sparse fc1 kept the model within 10% of dense at batch 1 either way).
TIMED_MARGIN = 0.9
# A compressed form that loses is timed again, up to this many windows in all, each form and
# batch keeping its best over them: one window a busy moment spoilt (LeNet-300-100's fc1 went
# dense in 1 of 11 fresh loads on a 2-core machine, then ran 2x slower than sparse) does not
# decide the form, and a form that really loses loses in every window.
TIMED_WINDOWS = 2
CONV_MAX_DENSITY = 0.05  # 1x1 convolutions: sparse only at or below this density ...
CONV_MAX_PIXELS = 256  # ... and on feature maps this small (measured: loses at 56x56)


def _per_entry_ns(kind: str, batch: int) -> float:
    if kind == SPARSE:
        return 0.5 if batch == 1 else 0.75 + 0.04 * batch
    if kind == LUT:
        return 0.14 + 0.03 * batch
    return 0.2 + 0.025 * batch


def predicted_ns(kind: str, rows: int, cols: int, nnz: int, batch: int) -> float:
    """The cost model's time for one product of a ``rows x cols`` weight with ``nnz`` nonzeros."""
    entries = nnz if kind == SPARSE else rows * cols
    return _CALL_NS[kind] + entries * _per_entry_ns(kind, batch)


def choose(rows: int, cols: int, nnz: int, *, dense_codes: bool, max_batch: int = MAX_BATCH) -> str:
    """SPARSE, LUT or DENSE for a linear layer: the form predicted fastest at every batch from
    1 to ``max_batch``.

    A compressed form is chosen only for layers of CACHE_WEIGHTS or more, where it is predicted
    at least 1/MARGIN times faster than dense at each batch of the range; LUT only for dense
    codes (a weight with no index to skip zeros with); the faster of the two at ``max_batch``.
    """
    if rows * cols < CACHE_WEIGHTS:
        return DENSE
    best, best_ns = DENSE, None
    for kind in [SPARSE] + ([LUT] if dense_codes else []):
        wins = all(
            predicted_ns(kind, rows, cols, nnz, b) <= MARGIN * predicted_ns(DENSE, rows, cols, nnz, b)
            for b in range(1, max_batch + 1)
        )
        ns = predicted_ns(kind, rows, cols, nnz, max_batch)
        if wins and (best_ns is None or ns < best_ns):
            best, best_ns = kind, ns
    return best


def contender(rows: int, cols: int, nnz: int, *, dense_codes: bool, max_batch: int = MAX_BATCH) -> str | None:
    """The compressed form (SPARSE or LUT) to time against dense where the cost model cannot tell:
    one predicted within BAND of dense's time at some batch from 1 to ``max_batch`` (of two such,
    the one predicted faster at ``max_batch``), or SPARSE for a cache-resident layer (MIN_WEIGHTS
    to CACHE_WEIGHTS) of at most SMALL_MAX_DENSITY stored; None where :func:`choose`'s answer
    stands."""
    weights = rows * cols
    if weights < MIN_WEIGHTS:
        return None
    if weights < CACHE_WEIGHTS:
        return SPARSE if nnz <= SMALL_MAX_DENSITY * weights else None
    near = [
        kind
        for kind in [SPARSE] + ([LUT] if dense_codes else [])
        if any(
            BAND[0]
            < predicted_ns(kind, rows, cols, nnz, b) / predicted_ns(DENSE, rows, cols, nnz, b)
            < BAND[1]
            for b in range(1, max_batch + 1)
        )
    ]
    return min(near, key=lambda k: predicted_ns(k, rows, cols, nnz, max_batch)) if near else None


def time_forms(
    new: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, max_batch: int = MAX_BATCH
) -> dict[int, tuple[float, float]]:
    """Seconds per call of the compressed module ``new`` and of an ``nn.Linear`` of ``weight``
    (float32, the same layer) at each of TIMED_BATCHES up to ``max_batch``: the best of
    TIMED_ROUNDS interleaved calls after TIMED_WARMUP_S of warm-up calls, on fixed random
    inputs; each timed call follows an untimed one of the same form, which takes the cost of
    threads the other form left spinning (torch's OpenMP threads, the kernels' pool). Returns
    {batch: (compressed, dense)}."""
    batches = sorted({b for b in TIMED_BATCHES if b <= max_batch} | {max_batch})
    generator = torch.Generator().manual_seed(0)
    inputs = {b: torch.randn(b, weight.shape[1], generator=generator) for b in batches}
    dense = nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=bias is not None)
    dense.weight = nn.Parameter(weight, requires_grad=False)  # the very tensors: no init, no copy
    if bias is not None:
        dense.bias = nn.Parameter(bias.detach(), requires_grad=False)
    forms: list[Callable[[torch.Tensor], Any]] = [new, dense]
    best = {b: [float("inf"), float("inf")] for b in batches}
    with torch.inference_mode():
        warm_until = time.perf_counter() + TIMED_WARMUP_S
        while True:
            for b in batches:
                for form in forms:
                    form(inputs[b])
            if time.perf_counter() >= warm_until:
                break
        for _ in range(TIMED_ROUNDS):
            for b in batches:
                for i, form in enumerate(forms):
                    form(inputs[b])
                    start = time.perf_counter()
                    form(inputs[b])
                    best[b][i] = min(best[b][i], time.perf_counter() - start)
    return {b: (t[0], t[1]) for b, t in best.items()}


def timed_faster(times: dict[int, tuple[float, float]]) -> bool:
    """Whether the compressed form's timings ({batch: (compressed, dense) seconds}) earn it the
    layer: the largest of their ratios to dense's times the smallest is at most TIMED_MARGIN
    (its worst slowdown is at most TIMED_MARGIN times dense's worst slowdown against it)."""
    ratios = [ours / max(dense, 1e-12) for ours, dense in times.values()]
    return max(ratios) * min(ratios) <= TIMED_MARGIN


def choose_conv(rows: int, cols: int, nnz: int, pixels: int) -> str:
    """SPARSE or DENSE for a 1x1 convolution on feature maps of ``pixels`` pixels: dense GEMM
    is compute-bound there (about 0.02 ns per weight and pixel against the sparse kernel's
    0.1 to 0.5 ns per entry and pixel), so sparse pays only when very sparse on small maps."""
    density = nnz / max(rows * cols, 1)
    ok = rows * cols >= CACHE_WEIGHTS // 4 and density <= CONV_MAX_DENSITY and pixels <= CONV_MAX_PIXELS
    return SPARSE if ok else DENSE


def _native_arrays(module: nn.Module, names: tuple[str, ...]) -> tuple[np.ndarray | None, ...] | None:
    """numpy views of the module's form buffers and its bias (None when it has none) for the
    native kernels, or None where they cannot run (no kernels, tensors off the CPU or not
    float32 values). The views share the tensors' memory, so in-place changes show through;
    they are cached while the very same tensors (the cache holds them, so their ids stay
    theirs) keep their data pointers (``.data =`` and ``set_`` move them). DCNN_NO_NATIVE is
    read when the views are made (a module's first call, or after its tensors change). The
    check runs on every call of a layer that may take microseconds: one loop, no lists."""
    buffers = module._buffers
    bias = module._parameters.get("bias")
    cached = module.__dict__.get("_arrays")
    if cached is not None:
        tensors, arrays, pointers = cached
        for name, tensor, pointer in zip(names, tensors, pointers, strict=False):  # the bias last
            now = buffers[name]
            if now is not tensor or now.data_ptr() != pointer:
                break
        else:
            if tensors[-1] is bias and (bias is None or bias.data_ptr() == pointers[-1]):
                return arrays
    tensors = [*(buffers[name] for name in names), bias]
    ready = matvec.enabled() and all(t.is_cpu for t in tensors if t is not None)
    ready = ready and tensors[-2].dtype == torch.float32
    ready = ready and (bias is None or bias.dtype == torch.float32)
    arrays = tuple(t.detach().numpy() if t is not None else None for t in tensors) if ready else None
    pointers = [t.data_ptr() if t is not None else 0 for t in tensors]
    module.__dict__["_arrays"] = (tensors, arrays, pointers)
    return arrays


def _cpu_float32(x: torch.Tensor) -> bool:
    return x.is_cpu and x.dtype == torch.float32


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy() if x.requires_grad else x.numpy()


def _call(kernel: Any, *args: Any) -> None:
    """A native product; its refusal of the module's buffers (edited into disagreement) is a
    DcnnError."""
    try:
        kernel(*args)
    except ValueError as exc:
        raise DcnnError(f"the compressed weight is inconsistent: {exc}", rule="usage") from None


def _threads() -> int:
    return min(torch.get_num_threads(), MAX_THREADS)


class _SparseForm(nn.Module):
    """The sparse compressed form: buffers ``indptr``, ``cols``, ``codes`` and ``codebook``."""

    def _init_form(
        self,
        rows: int,
        cols: int,
        indptr: np.ndarray,
        columns: np.ndarray,
        codes: np.ndarray,
        codebook: np.ndarray,
    ) -> None:
        self.register_buffer("indptr", torch.from_numpy(np.ascontiguousarray(indptr, dtype=np.int64)))
        signed = np.int16 if columns.itemsize == 2 else np.int32  # torch's index types are signed
        self.register_buffer("cols", torch.from_numpy(np.ascontiguousarray(columns).view(signed)))
        self.register_buffer("codes", torch.from_numpy(np.ascontiguousarray(codes, dtype=np.uint8)))
        self.register_buffer("codebook", torch.from_numpy(np.ascontiguousarray(codebook, dtype=np.float32)))
        self._rows, self._cols = rows, cols

    def _spmm_native(self, x: np.ndarray, p: int, n: int, linear: bool) -> np.ndarray | None:
        """``W x + bias`` by the native kernel for float32 C-contiguous ``x``: [n, in, p] gives
        [n, rows, p] (a convolution); with ``linear``, x [p, in] gives [p, rows] (n = 1; the
        kernel transposes x itself). None where the kernel cannot run."""
        arrays = _native_arrays(self, _SPARSE_BUFFERS)
        if arrays is None:
            return None
        y = np.empty((p, self._rows) if linear else (n, self._rows, p), dtype=np.float32)
        if y.size:
            args = (self._cols, p, n, linear, _threads(), arrays[4], linear)
            _call(matvec._matvec.spmm, *arrays[:4], x, y, *args)
        return y

    def _spmm_torch(self, x3: torch.Tensor, transposed_out: bool) -> torch.Tensor:
        """The torch fallback of _spmm_native (any device and float dtype)."""
        n, _, p = x3.shape
        mask = 0xFFFF if self.cols.dtype == torch.int16 else 0xFFFFFFFF
        values = self.codebook.to(x3.dtype)[self.codes.long()]
        with warnings.catch_warnings():  # torch flags its CSR support as beta
            warnings.simplefilter("ignore", UserWarning)
            w = torch.sparse_csr_tensor(
                self.indptr, self.cols.long() & mask, values, size=(self._rows, self._cols)
            )
            flat = x3.detach().permute(1, 0, 2).reshape(self._cols, n * p)
            y = (w @ flat).reshape(self._rows, n, p)
        if self.bias is not None:
            y = y + self.bias.detach().to(y.dtype).view(-1, 1, 1)
        return y.permute(1, 2, 0).contiguous() if transposed_out else y.permute(1, 0, 2).contiguous()

    def stored_bytes(self) -> int:
        """Bytes of the compressed form (bias excluded)."""
        return sum(b.numel() * b.element_size() for b in (self.indptr, self.cols, self.codes, self.codebook))


class SparseCodedLinear(_SparseForm):
    """``nn.Linear`` computed on a sparse codebook weight (CSR indices, uint8 codes)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        indptr: np.ndarray,
        cols: np.ndarray,
        codes: np.ndarray,
        codebook: np.ndarray,
        bias: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_form(out_features, in_features, indptr, cols, codes, codebook)
        self.bias = bias if bias is None or isinstance(bias, nn.Parameter) else nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise RuntimeError(f"expected {self.in_features} input features, got {x.shape[-1]}")
        if _cpu_float32(x):
            x2 = _numpy(x)
            if x2.ndim != 2 or not x2.flags.c_contiguous:
                x2 = np.ascontiguousarray(x2.reshape(-1, self.in_features))
            y = self._spmm_native(x2, x2.shape[0], 1, linear=True)
            if y is not None:
                y = torch.from_numpy(y)
                return y if x.dim() == 2 else y.view(*x.shape[:-1], self.out_features)
        y = self._spmm_torch(x.detach().reshape(-1, self.in_features).t().unsqueeze(0), transposed_out=True)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.codes.numel()}"


class SparseCodedConv2d(_SparseForm):
    """A 1x1 ``nn.Conv2d`` (no padding, one group) computed on a sparse codebook weight."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: tuple[int, int],
        indptr: np.ndarray,
        cols: np.ndarray,
        codes: np.ndarray,
        codebook: np.ndarray,
        bias: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, tuple(stride)
        self._init_form(out_channels, in_channels, indptr, cols, codes, codebook)
        self.bias = bias if bias is None or isinstance(bias, nn.Parameter) else nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise RuntimeError(f"expected input [N, {self.in_channels}, H, W], got {list(x.shape)}")
        if self.stride != (1, 1):
            x = x[:, :, :: self.stride[0], :: self.stride[1]]
        n, c, h, w = x.shape
        if _cpu_float32(x):
            x3 = np.ascontiguousarray(_numpy(x).reshape(n, c, h * w))
            y = self._spmm_native(x3, h * w, n, linear=False)
            if y is not None:
                return torch.from_numpy(y).view(n, self.out_channels, h, w)
        return self._spmm_torch(x.reshape(n, c, h * w), transposed_out=False).view(n, self.out_channels, h, w)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}, nnz={self.codes.numel()}"


class LutCodedLinear(nn.Module):
    """``nn.Linear`` computed on dense codes: one uint8 code per weight, looked up in a codebook."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        codes: np.ndarray,
        codebook: np.ndarray,
        bias: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        codes = np.ascontiguousarray(codes, dtype=np.uint8).reshape(out_features, in_features)
        self.register_buffer("codes", torch.from_numpy(codes))
        self.register_buffer("codebook", torch.from_numpy(np.ascontiguousarray(codebook, dtype=np.float32)))
        self.bias = bias if bias is None or isinstance(bias, nn.Parameter) else nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise RuntimeError(f"expected {self.in_features} input features, got {x.shape[-1]}")
        lead = x.shape[:-1]
        arrays = _native_arrays(self, ("codes", "codebook")) if _cpu_float32(x) else None
        if arrays is not None:
            x2 = _numpy(x)
            if x2.ndim != 2 or not x2.flags.c_contiguous:
                x2 = np.ascontiguousarray(x2.reshape(-1, self.in_features))
            y = np.empty((x2.shape[0], self.out_features), dtype=np.float32)
            if y.size:
                args = (self.out_features, self.in_features, x2.shape[0], _threads())
                _call(matvec._matvec.lut, *arrays[:2], x2, y, *args)
            if arrays[2] is not None:
                y += arrays[2]
            return torch.from_numpy(y).view(*lead, self.out_features)
        # the fallback expands the weight for the duration of the call
        y = x.detach().reshape(-1, self.in_features) @ self.codebook.to(x.dtype)[self.codes.long()].t()
        if self.bias is not None:
            y = y + self.bias.detach().to(y.dtype)
        return y.view(*lead, self.out_features)

    def stored_bytes(self) -> int:
        """Bytes of the compressed form (bias excluded)."""
        return self.codes.numel() + self.codebook.numel() * self.codebook.element_size()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, codes=dense"


def from_codes(layer: nn.Module, codes: Codes, kind: str) -> nn.Module:
    """The compressed module of ``kind`` (SPARSE or LUT) for ``layer`` (nn.Linear or 1x1
    nn.Conv2d) whose weight is ``codes``; the layer's bias Parameter object is kept."""
    rows, cols = codes.shape[0], int(np.prod(codes.shape[1:], dtype=np.int64))
    book = np.asarray(codes.codebook, dtype=np.float32)
    if not 1 <= book.size <= matvec.MAX_CODEBOOK:
        raise DcnnError(f"a codebook of {book.size} values does not fit uint8 codes", rule="usage")
    if codes.codes.size and int(codes.codes.max()) >= book.size:
        raise FormatError("a code lies outside the codebook", rule="codes")
    bias = layer.bias
    if kind == LUT:
        if codes.positions is not None or not isinstance(layer, nn.Linear):
            raise DcnnError("LUT is for the dense codes of a linear layer", rule="usage")
        return LutCodedLinear(cols, rows, codes.codes.astype(np.uint8), book, bias)
    if codes.positions is not None:
        positions, entry_codes = codes.positions, codes.codes
    else:  # dense codes: keep the entries whose value is nonzero
        flat = codes.codes.reshape(-1)
        positions = np.flatnonzero(book[flat] != 0)
        entry_codes = flat[positions]
    indptr, columns = matvec.csr_of(positions, rows, cols)
    entry_codes = entry_codes.astype(np.uint8)
    if isinstance(layer, nn.Linear):
        return SparseCodedLinear(cols, rows, indptr, columns, entry_codes, book, bias)
    stride = tuple(int(s) for s in layer.stride)
    return SparseCodedConv2d(cols, rows, stride, indptr, columns, entry_codes, book, bias)


def replace_coded(
    module: nn.Module,
    f: DcnnFile,
    names: Collection[str],
    max_batch: int = MAX_BATCH,
    conv_pixels: int | None = None,
    timer: Callable[..., dict[int, tuple[float, float]]] | None = None,
) -> set[str]:
    """Replace the eligible layers of ``module`` whose ``weight`` is among ``names`` and stored
    coded in ``f`` by compressed modules where :func:`choose` says so; return the weight names
    replaced (their other tensors, such as the bias, are still to be loaded). 1x1 convolutions
    are considered only given ``conv_pixels``, the feature map size they will run on (see
    :func:`choose_conv`); load_into(compressed=True) leaves them dense. A linear layer that
    :func:`contender` names is timed by ``timer`` (default :func:`time_forms`, at torch's thread
    count) in both forms and replaced only where :func:`timed_faster` says so (on the best of up
    to TIMED_WINDOWS timings)."""
    params = module.state_dict(keep_vars=True)
    owners: dict[int, int] = {}
    for value in params.values():
        owners[id(value)] = owners.get(id(value), 0) + 1
    new_layers: dict[str, nn.Module] = {}
    for prefix, layer in list(module.named_modules()):
        name = f"{prefix}.weight" if prefix else "weight"
        eligible = prefix and _eligible(layer) and owners.get(id(layer.weight), 0) == 1
        if name not in names or not eligible or (isinstance(layer, nn.Conv2d) and conv_pixels is None):
            continue
        info = f.info(name)
        # The kernels compute on codes alone: RAW and the 1.1 encodings (scales, outliers) stay dense.
        if (
            info.encoding not in ("DENSE_CODES", "SPARSE_CODES")
            or info.dtype != "float32"
            or info.weight_bits > 8
        ):
            continue
        rows, cols = info.shape[0], info.numel // max(info.shape[0], 1)
        rival = None
        if isinstance(layer, nn.Conv2d):
            kind = choose_conv(rows, cols, info.nonzeros, conv_pixels)
        else:
            dense_codes = info.encoding == "DENSE_CODES"
            kind = choose(rows, cols, info.nonzeros, dense_codes=dense_codes, max_batch=max_batch)
            rival = contender(rows, cols, info.nonzeros, dense_codes=dense_codes, max_batch=max_batch)
        if kind == DENSE and rival is None:
            continue
        codes = f.get_codes(name)
        if f.verify:
            found = int(np.count_nonzero((codes.codebook != 0)[codes.codes]))
            if found != info.nonzeros:
                raise FormatError(
                    f"{found} nonzeros decoded, {info.nonzeros} declared",
                    rule="nonzeros",
                    path=f.path,
                    tensor=name,
                )
        try:
            new = from_codes(layer, codes, rival or kind)
        except DcnnError as exc:
            raise exc.located(path=f.path, tensor=name) from None
        timed = rival is not None  # a close call: timed on this machine
        if timed and not _wins_timed(timer or time_forms, new, codes, rows, cols, layer, max_batch):
            continue
        new_layers[prefix] = new
    for prefix, new in new_layers.items():  # swapped in only once every weight has decoded
        _set_submodule(module, prefix, new)
    return {f"{prefix}.weight" for prefix in new_layers}


def _wins_timed(
    timer: Callable[..., dict[int, tuple[float, float]]],
    new: nn.Module,
    codes: Codes,
    rows: int,
    cols: int,
    layer: nn.Module,
    max_batch: int,
) -> bool:
    """Whether ``new`` earns a close call on this machine: :func:`timed_faster` on the best
    times over up to TIMED_WINDOWS windows of ``timer``."""
    weight = _dense_weight(codes, rows, cols)
    best: dict[int, tuple[float, float]] = {}
    for _ in range(TIMED_WINDOWS):
        times = timer(new, weight, layer.bias, max_batch)
        best = {b: (min(t[0], best.get(b, t)[0]), min(t[1], best.get(b, t)[1])) for b, t in times.items()}
        if timed_faster(best):
            return True
    return False


def _dense_weight(codes: Codes, rows: int, cols: int) -> torch.Tensor:
    """The float32 ``rows x cols`` weight that coded weight holds (for timing the dense form)."""
    book = np.asarray(codes.codebook, dtype=np.float32)
    if codes.positions is None:
        return torch.from_numpy(book[codes.codes.reshape(rows, cols)])
    flat = np.zeros(rows * cols, dtype=np.float32)
    flat[codes.positions] = book[codes.codes]
    return torch.from_numpy(flat.reshape(rows, cols))


def _eligible(layer: nn.Module) -> bool:
    """Exactly nn.Linear, or an nn.Conv2d with a 1x1 kernel, one group and no padding; float32
    on the CPU (subclasses may read ``.weight`` themselves, as attention's out_proj does)."""
    if type(layer) is nn.Linear:
        ok = True
    elif type(layer) is nn.Conv2d:
        ok = tuple(layer.kernel_size) == (1, 1) and layer.groups == 1 and tuple(layer.padding) == (0, 0)
    else:
        return False
    return ok and layer.weight.dtype == torch.float32 and layer.weight.device.type == "cpu"


def _set_submodule(module: nn.Module, path: str, new: nn.Module) -> None:
    parent_name, _, child = path.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, child, new)
