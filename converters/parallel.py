"""Compress a model's tensors in parallel, written in source order.

Each tensor is one task: a worker reads the tensor from the source file itself (a task
names the file, the tensor and where it lies, never carries the array, except for
inputs that only exist in memory), compresses and encodes it, and sends back the encoded
tensor. The driver writes results in task order with at most twice ``workers`` tasks in
flight, so memory stays bounded whatever the model's size. Compression is seeded per tensor
and depends on nothing but the tensor and the config, so the file is byte-identical whatever
the number of workers or the backend: a process pool on this machine, or Ray tasks on a
cluster (``RAY_ADDRESS``, or a local Ray instance).
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from dcformat import EncodedTensor

from .compress.config import CompressionConfig
from .compress.report import TensorReport
from .compress.tensor import compress_weight, floors
from .errors import ConvertError
from .weight import DTYPE_NAMES, Weight, outline


@dataclass(frozen=True)
class SafetensorsRef:
    """A tensor of a .safetensors file: ``nbytes`` at byte ``offset`` of ``path``."""

    path: str
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    def outline(self) -> Weight:
        return Weight(self.name, outline(self.shape, self.dtype), self.dtype)

    def load(self) -> Weight:
        from .formats.safetensors_file import read_tensor

        with open(self.path, "rb") as f:
            return read_tensor(
                f, Path(self.path), self.name, self.dtype, self.shape, self.offset, self.nbytes
            )


@dataclass(frozen=True)
class CheckpointRef:
    """A tensor of a torch checkpoint (the worker maps the file once and keeps it)."""

    path: str
    name: str
    nbytes: int
    shape: tuple[int, ...]
    dtype: str

    def outline(self) -> Weight:
        if self.dtype not in DTYPE_NAMES:
            raise ConvertError(
                f"tensor {self.name!r} has unsupported dtype torch.{self.dtype}", path=self.path
            )
        return Weight(self.name, outline(self.shape, self.dtype), self.dtype)

    def load(self) -> Weight:
        from .weight import from_torch

        state = _checkpoint(self.path)
        if self.name not in state:
            raise ConvertError(f"tensor {self.name!r} is not in the checkpoint", path=self.path)
        return from_torch(self.name, state[self.name])


@dataclass(frozen=True)
class InMemory:
    """A tensor that exists only in memory (ONNX initializers, live modules): sent as is."""

    weight: Weight

    @property
    def name(self) -> str:
        return self.weight.name

    @property
    def nbytes(self) -> int:
        return self.weight.array.nbytes

    def outline(self) -> Weight:
        return self.weight

    def load(self) -> Weight:
        return self.weight


@dataclass(frozen=True)
class Deferred:
    """A tensor read when it is compressed: ``read()`` (picklable, e.g. a slice of an external
    data file) gives the stored-form array of the outline ``weight``."""

    weight: Weight
    read: Callable[[], Any]
    nbytes: int

    @property
    def name(self) -> str:
        return self.weight.name

    def outline(self) -> Weight:
        return self.weight

    def load(self) -> Weight:
        return replace(self.weight, array=self.read())


Task = SafetensorsRef | CheckpointRef | InMemory | Deferred
Job = tuple[Task, float | None]  # a task and its chooser floor

_mapped: dict[str, Any] = {}


def _checkpoint(path: str) -> Any:
    """The state_dict of the checkpoint this worker last read (one at a time: shards come in order)."""
    if path not in _mapped:
        from .formats.pytorch import load_state

        _mapped.clear()
        _mapped[path] = load_state(Path(path))[0]
    return _mapped[path]


@dataclass
class Compressed:
    """A task's result: the encoded tensor, its error, and who made it in how long.

    The tensor travels in ``EncodedTensor.to_bytes`` form (header records do not pickle), so
    any encoding, whatever its sections, comes back whole.
    """

    name: str
    record: bytes
    payloads: list[bytes]
    error: float
    report: TensorReport
    nbytes: int  # the tensor's bytes in the source
    seconds: float
    host: str
    pid: int
    peak_rss: int  # the worker process's peak resident memory so far, bytes
    cpu_seconds: float = 0.0  # CPU time the task took in its process

    def encoded(self) -> EncodedTensor:
        """The tensor for ``Writer.add_encoded``."""
        return EncodedTensor.from_bytes(self.record, self.payloads)


def run_task(task: Task, config: CompressionConfig, floor: float | None = None) -> Compressed:
    """Read, compress and encode one tensor (in whichever process runs it); ``floor``: its
    chooser floor (see :func:`converters.compress.tensor.floors`)."""
    start, cpu = time.perf_counter(), time.process_time()
    weight = task.load()
    result = compress_weight(weight, config, floor=floor)
    encoded = result.encoded
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    record, payloads = encoded.to_bytes()
    return Compressed(
        weight.name,
        record,
        payloads,
        result.error,
        result.report,
        weight.array.nbytes,
        seconds,
        socket.gethostname(),
        os.getpid(),
        peak,
        time.process_time() - cpu,
    )


def default_workers() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def compressed(
    tasks: Iterable[Task], config: CompressionConfig, workers: int = 1, *, ray: bool = False
) -> Iterator[Compressed]:
    """Results of ``tasks`` in their order.

    ``workers`` 1 runs in this process; more runs a process pool (forkserver where the
    platform has it, else spawn); ``ray`` runs Ray tasks on ``workers`` CPUs (0: all the
    cluster's). At most ``2 * workers`` tasks are in flight: one per worker being compressed,
    and as many finished ones waiting for an earlier, longer one to be written. A worker
    that dies raises ConvertError.
    """
    if workers < 0 or (workers == 0 and not ray):
        raise ConvertError(f"workers must be at least 1, got {workers}", rule="usage")
    jobs: Iterable[Job]
    if config.snr is None:  # nothing to allocate: tasks stream through
        jobs = ((task, None) for task in tasks)
    else:  # the chooser's floors depend on every tensor's size: allocated from outlines first
        tasks = list(tasks)
        chooser = floors((task.outline() for task in tasks), config)
        jobs = [(task, chooser.get(task.name)) for task in tasks]
    if ray:
        yield from _ray(jobs, config, workers)
    elif workers == 1:
        try:
            for task, floor in jobs:
                yield run_task(task, config, floor)
        finally:
            _mapped.clear()  # no checkpoint stays mapped in this process
    else:
        yield from _pool(list(jobs), config, workers)


def _pool(tasks: list[Job], config: CompressionConfig, workers: int) -> Iterator[Compressed]:
    if not tasks:
        return
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload([__name__])
    executor = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context)
    try:

        def submit(job: Job) -> Future:
            return executor.submit(run_task, job[0], config, job[1])

        yield from _ordered(tasks, submit, Future.result, 2 * workers)
    except BrokenProcessPool:
        raise ConvertError("a worker process died (killed, or out of memory?); nothing was written") from None
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _ordered(
    jobs: Iterable[Job], submit: Callable[[Job], Any], get: Callable[[Any], Compressed], window: int
) -> Iterator[Compressed]:
    """Submit jobs keeping ``window`` in flight, and yield their results in order."""
    pending: deque[Any] = deque()
    for job in jobs:
        pending.append(submit(job))
        if len(pending) >= window:
            yield get(pending.popleft())
    while pending:
        yield get(pending.popleft())


def _ray(tasks: Iterable[Job], config: CompressionConfig, workers: int) -> Iterator[Compressed]:
    try:
        import ray
    except ImportError:
        raise ConvertError("--ray needs Ray: pip install 'dcnn[ray]'", rule="usage") from None
    started = not ray.is_initialized()
    if started:  # RAY_ADDRESS names a cluster; without it Ray starts a local instance
        ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        cpus = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        remote = ray.remote(num_cpus=1, max_retries=0)(run_task)
        shared = ray.put(config)
        submit = partial(_ray_submit, remote, shared)
        yield from _ordered(tasks, submit, partial(_ray_get, ray), 2 * cpus)
    finally:
        if started:
            ray.shutdown()


def _ray_submit(remote: Any, config: Any, job: Job) -> Any:
    return remote.remote(job[0], config, job[1])


def _ray_get(ray: Any, ref: Any) -> Compressed:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:  # the task raised: re-raise its own error
        cause = exc.as_instanceof_cause()
        if isinstance(cause, ConvertError):
            raise ConvertError(str(cause)) from None
        raise ConvertError(f"a Ray task failed: {type(cause).__name__}: {cause}") from None
    except ray.exceptions.RayError as exc:  # a worker or node died
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConvertError(f"a Ray worker failed ({first}); nothing was written") from None


class WorkerStats:
    """What each worker process did: tensors, seconds of work (wall and CPU) and peak RSS; and
    each task's time."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, int], dict[str, Any]] = {}
        self.tasks: list[dict[str, Any]] = []

    def add(self, result: Compressed) -> None:
        key = (result.host, result.pid)
        row = self._rows.setdefault(
            key,
            {
                "host": result.host,
                "pid": result.pid,
                "tensors": 0,
                "seconds": 0.0,
                "cpu_seconds": 0.0,
                "peak_rss_bytes": 0,
            },
        )
        row["tensors"] += 1
        row["seconds"] += result.seconds
        row["cpu_seconds"] += result.cpu_seconds
        row["peak_rss_bytes"] = max(row["peak_rss_bytes"], result.peak_rss)
        self.tasks.append({"name": result.name, "seconds": result.seconds, "pid": result.pid})

    def rows(self) -> list[dict[str, Any]]:
        return list(self._rows.values())
