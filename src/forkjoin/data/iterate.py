"""``Dataset.iter_batches``: the result streamed as batches of a fixed size, in the format a
training loop wants, produced ahead of the consumer.

::

    workers: read + preprocess partitions (in_flight of them at once)      execute.py / pipeline.py
       │  Arrow tables, in order (or as finished with ordered=False)
       ▼
    rebatch: exact batch_size rows (the last one short unless drop_last)
       │  local_shuffle_buffer: each batch drawn at random from a buffer of that many rows
       ▼
    convert: pyarrow | pandas | numpy (dict of arrays) | torch (dict of tensors)
       │  in a background thread, up to `prefetch` batches ahead of the consumer
       ▼
    for batch in ds.iter_batches(batch_size=256, batch_format="torch"): ...
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pyarrow as pa

from .plan import to_format

ITER_FORMATS = ("pyarrow", "pandas", "numpy", "torch")
# How long the consumer waits for the producer thread before it checks that it still lives.
_POLL_SECONDS = 1.0

_END = object()


def convert(table: pa.Table, batch_format: str) -> Any:
    """A batch in ``batch_format``; for torch, a dict of tensors (columns torch cannot hold,
    such as strings, stay numpy arrays)."""
    if batch_format != "torch":
        return to_format(table, batch_format)
    import numpy as np
    import torch

    out: dict[str, Any] = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        array = column.to_numpy(zero_copy_only=False)
        if array.dtype == object and len(array) and isinstance(array[0], np.ndarray):
            array = np.stack(array)  # a list column of equal-length vectors: a 2-D tensor
        if not array.flags.writeable:
            array = array.copy()  # Arrow's buffers are read-only; a tensor may be written to
        try:
            out[name] = torch.from_numpy(np.ascontiguousarray(array))
        except TypeError:
            out[name] = array
    return out


def rebatch(
    tables: Iterable[pa.Table], batch_size: int | None, drop_last: bool
) -> Iterator[pa.Table]:
    """Exactly ``batch_size`` rows per table (the last short unless ``drop_last``)."""
    if batch_size is None:
        for table in tables:
            if table.num_rows:
                yield table
        return
    pending: list[pa.Table] = []
    held = 0
    for table in tables:
        if not table.num_rows:
            continue
        pending.append(table)
        held += table.num_rows
        if held < batch_size:
            continue
        merged = pa.concat_tables(pending) if len(pending) > 1 else pending[0]
        start = 0
        while held - start >= batch_size:
            yield merged.slice(start, batch_size)
            start += batch_size
        rest = merged.slice(start)
        pending, held = ([rest], rest.num_rows) if rest.num_rows else ([], 0)
    if held and not drop_last:
        yield pa.concat_tables(pending) if len(pending) > 1 else pending[0]


def shuffle_locally(
    batches: Iterable[pa.Table], buffer_rows: int, batch_size: int, seed: int | None
) -> Iterator[pa.Table]:
    """Batches drawn at random from a buffer of at least ``buffer_rows`` rows (Ray Data's
    ``local_shuffle_buffer_size``): rows mix across nearby batches, memory stays bounded."""
    import numpy as np

    rng = np.random.default_rng(seed)
    buffer: pa.Table | None = None

    def draw(table: pa.Table) -> tuple[pa.Table, pa.Table]:
        order = rng.permutation(table.num_rows)
        shuffled = table.take(pa.array(order))
        return shuffled.slice(0, batch_size), shuffled.slice(batch_size)

    for batch in batches:
        buffer = batch if buffer is None else pa.concat_tables([buffer, batch])
        while buffer.num_rows >= buffer_rows + batch_size:
            out, buffer = draw(buffer)
            yield out
        if buffer.num_rows > 4 * (buffer_rows + batch_size):
            buffer = buffer.combine_chunks()
    while buffer is not None and buffer.num_rows:
        out, buffer = draw(buffer)
        yield out


def prefetched(source: Iterator[Any], prefetch: int) -> Iterator[Any]:
    """``source`` run in a background thread, at most ``prefetch`` items ahead. Its errors are
    raised here; closing this iterator stops the thread (and closes ``source``)."""
    if prefetch <= 0:
        yield from source
        return
    handoff: queue.Queue[Any] = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the consumer
            put(("error", exc))
        finally:
            close: Callable[[], Any] | None = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="fj-iter-batches prefetch", daemon=True)
    thread.start()
    try:
        while True:
            try:
                kind, value = handoff.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if not thread.is_alive():
                    raise RuntimeError("the iter_batches producer stopped without a word")
                continue
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()


def iter_tables(
    tables: Iterable[pa.Table],
    *,
    batch_size: int | None,
    batch_format: str,
    drop_last: bool,
    local_shuffle_buffer: int | None,
    local_shuffle_seed: int | None,
    prefetch: int,
) -> Iterator[Any]:
    """The whole chain after the workers: rebatch, shuffle, convert, prefetch."""
    check(batch_size, batch_format, local_shuffle_buffer, prefetch)
    batches = rebatch(tables, batch_size, drop_last)
    if local_shuffle_buffer:
        size = batch_size or 1
        batches = shuffle_locally(batches, local_shuffle_buffer, size, local_shuffle_seed)
        if drop_last:
            batches = (b for b in batches if b.num_rows == size)
    converted = (convert(batch, batch_format) for batch in batches)
    return prefetched(converted, prefetch)


def check(
    batch_size: int | None, batch_format: str, local_shuffle_buffer: int | None, prefetch: int
) -> None:
    if batch_format not in ITER_FORMATS:
        raise ValueError(f"batch_format must be one of {ITER_FORMATS}, got {batch_format!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    if local_shuffle_buffer is not None and local_shuffle_buffer < 1:
        raise ValueError(f"local_shuffle_buffer must be >= 1, got {local_shuffle_buffer!r}")
    if prefetch < 0:
        raise ValueError(f"prefetch must be >= 0, got {prefetch!r}")
