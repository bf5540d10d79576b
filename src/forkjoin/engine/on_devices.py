"""``fj.run_on_devices``: batched work (typically model inference) on every GPU at once.

::

    data ── split into batches ──> one worker process per device (CUDA_VISIBLE_DEVICES pinned)
                                     setup(device) once: load the model onto the device
                                     fn(state, batch) per batch; the next batch is already there
    outputs <── merged in order <──┘
                                     teardown(state) when done or on error, CUDA cache emptied,
                                     then the worker exits: the device is left clean

Each device gets its own process, so a crash, a leak or a CUDA error stays with its device, and
the memory of every device is given back when the call returns, whatever happened. Without GPUs
the same code runs on CPU worker processes (``device == "cpu"``).
"""

from __future__ import annotations

import atexit
import gc
import itertools
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any

from ..core.context import worker_context

_STATE = "forkjoin.run_on_devices"


def _start_worker(
    setup: Callable[[str], Any] | None, teardown: Callable[[Any], Any] | None
) -> None:
    """Pool initializer: set the device up once; release it when the worker exits."""
    context = worker_context()
    context.state[_STATE] = setup(context.device) if setup is not None else None
    atexit.register(_release, teardown)


def _release(teardown: Callable[[Any], Any] | None) -> None:
    context = worker_context()
    state = context.state.pop(_STATE, None)
    try:
        if teardown is not None:
            teardown(state)
    finally:
        del state
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            torch.cuda.empty_cache()


def _run_batch(fn: Callable[..., Any], with_state: bool, batch: Any) -> Any:
    if with_state:
        return fn(worker_context().state[_STATE], batch)
    return fn(batch)


def batches(data: Any, batch_size: int) -> Iterator[Any]:
    """Consecutive slices of ``data`` (views, for arrays and tensors), or lists of items from
    an iterable without a length."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    if hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        return (data[start : start + batch_size] for start in range(0, len(data), batch_size))
    iterator = iter(data)
    return iter(lambda: list(itertools.islice(iterator, batch_size)), [])


def merge_outputs(outputs: list[Any], merge: str = "auto") -> Any:
    """Batch outputs in order: one array or tensor when they are arrays or tensors (``auto``
    and ``concat``), one list when they are lists, else the list of outputs (``list``)."""
    if merge == "list" or not outputs:
        return outputs
    first = outputs[0]
    numpy = sys.modules.get("numpy")
    torch = sys.modules.get("torch")
    if numpy is not None and all(isinstance(out, numpy.ndarray) for out in outputs):
        return numpy.concatenate(outputs)
    if torch is not None and all(isinstance(out, torch.Tensor) for out in outputs):
        return torch.cat(outputs)
    if isinstance(first, list) and all(isinstance(out, list) for out in outputs):
        return [value for out in outputs for value in out]
    if merge == "concat":
        raise TypeError(
            f"merge='concat' needs every batch to return an array, a tensor or a list; the "
            f"first returned {type(first).__name__}"
        )
    return outputs


def _device_request(devices: str | int | Sequence[int]) -> tuple[dict[str, Any], list[int] | None]:
    """resources_per_worker and the GPU indices to use, from ``devices=``."""
    from ..machine import gpus

    visible = [gpu.index for gpu in gpus()]
    if devices == "cpu" or (devices == "auto" and not visible):
        return {}, None
    if devices == "auto":
        return {"gpu": 1}, visible
    if isinstance(devices, int):
        return {"gpu": 1}, visible[:devices]
    if isinstance(devices, str):
        raise ValueError(f"devices={devices!r}: use 'auto', 'cpu', a GPU count or GPU indices")
    return {"gpu": 1}, list(devices)


def run_on_devices(
    fn: Callable[..., Any],
    data: Iterable[Any],
    *,
    batch_size: int,
    devices: str | int | Sequence[int] = "auto",
    setup: Callable[[str], Any] | None = None,
    teardown: Callable[[Any], Any] | None = None,
    merge: str = "auto",
    **options: Any,
) -> Any:
    """Run ``fn`` over ``data`` in batches on every device in parallel; outputs in order.

    ``setup(device)`` runs once per device (e.g. ``load_model().to(device).eval()``) and its
    return value is passed to every call ``fn(state, batch)``; without ``setup``, ``fn(batch)``.
    ``devices``: "auto" (every GPU, else CPU workers), "cpu", a number of GPUs, or GPU indices.
    ``teardown(state)`` runs in each worker when the call ends, normally or not; the CUDA cache
    is emptied and the worker exits. Other options (workers for CPU runs, retries, timeout,
    progress...) are the Pool's.
    """
    from .pool import Pool

    per_worker, gpu_ids = _device_request(devices)
    if options.get("backend") not in (None, "process"):
        raise ValueError(
            "run_on_devices gives each device its own worker process (pinned, released on "
            "exit): use the default backend='process'"
        )
    options["backend"] = "process"
    if gpu_ids is not None:
        options.setdefault("workers", len(gpu_ids))
    pool = Pool(
        initializer=_start_worker,
        initargs=(setup, teardown),
        resources_per_worker=per_worker or None,
        gpus=gpu_ids,
        prefetch=2,  # the next batch is in the worker's memory while this one computes
        **options,
    )
    work = partial(_run_batch, fn, setup is not None)
    try:
        outputs = list(pool.imap(work, batches(data, batch_size), chunksize=1))
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return merge_outputs(outputs, merge)
