"""Pickling with out-of-band buffers: large buffers cross in shared memory, not through the socket.

::

    sender                                                 receiver
    ──────                                                 ────────
    pickle protocol 5 ─ small parts ─> stream (in the message)
          └─ buffers >= OUT_OF_BAND_MIN_BYTES ─> one segment ── fd ──> mapped copy-on-write
                                                                       pickle.loads(stream, buffers=
                                                                         views of the mapping)

Any object whose pickling exposes its memory as a ``PickleBuffer`` benefits, however deep it
sits: numpy arrays, pandas frames, Arrow arrays and tables, ``bytearray``. This module adds the
types that do not do it themselves: ``memoryview`` and CPU ``torch.Tensor`` (as a numpy view of
its storage). A pickle stream that is itself large (big ``bytes``, long lists) moves into the
segment too. On the receiving side nothing is copied: arrays view the mapping, which stays
alive as long as they do.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..core.shared import Shared, collect_handles
from ..core.shared import _live as live_handles
from . import shm
from .protocol import Descriptor, is_inline, view

PROTOCOL = 5

# Buffers (and pickle streams) at least this large travel through shared memory; smaller ones
# stay in the message. Below it, a segment's bookkeeping and fd passing cost more than copying
# through the socket: echo tasks/s, shared memory over socket, was 0.76x at 64 KiB, 1.37x at
# 128 KiB, 1.9x at 256 KiB and 3.4x at 1 MiB (``python benchmarks/bench_dataplane.py
# --threshold``, which sweeps it through this environment variable, read by caller and workers).
OUT_OF_BAND_MIN_BYTES = int(os.environ.get("FORKJOIN_OUT_OF_BAND_MIN_BYTES", 128 * 1024))


class Packed:
    """An object pickled for another process: the stream, plus buffers laid out in a segment."""

    __slots__ = ("stream", "spans", "segment", "stream_span", "nbytes", "handles", "pool")

    def __init__(
        self,
        stream: bytes | None,
        spans: tuple[tuple[int, int], ...] = (),
        segment: shm.Segment | None = None,
        stream_span: tuple[int, int] | None = None,
        handles: tuple[Shared[Any], ...] = (),
        pool: shm.SegmentPool | None = None,
    ) -> None:
        self.stream = stream  # None when the stream itself lives in the segment
        self.spans = spans  # (offset, length) of each out-of-band buffer, in pickle order
        self.segment = segment
        self.stream_span = stream_span
        self.handles = handles  # fj.shared handles referenced: the receiver needs them first
        self.pool = pool  # the pool the segment returns to, or None if it is not pooled
        nbytes = len(stream) if stream is not None else 0
        if segment is not None:
            nbytes += sum([length for _, length in spans])
            if stream_span is not None:
                nbytes += stream_span[1]
        self.nbytes = nbytes

    def descriptor(self, fd_index: int) -> tuple[Any, ...]:
        """What goes into the message: a ``protocol.Descriptor`` (as a plain tuple, in its field
        order), or ``(stream,)`` without a segment; ``fd_index`` names the segment's fd among
        the frame's."""
        segment = self.segment
        if segment is None:
            return (self.stream,)
        pooled = segment.segment_id if self.pool is not None else 0
        return (self.stream, self.spans, self.stream_span, segment.size, pooled, fd_index)

    def release(self) -> None:
        """The sender no longer needs the contents (the task finished): the segment may be reused
        once every receiver has let go of it too. Idempotent."""
        segment, pool = self.segment, self.pool
        if segment is not None and pool is not None:
            self.pool = None
            pool.drop(segment)


def _reduce_special(obj: Any) -> Any:
    """``reducer_override`` for types that do not offer their memory to pickle themselves."""
    if type(obj) is memoryview:
        return _reduce_memoryview(obj)
    torch = sys.modules.get("torch")
    if torch is not None and type(obj) is torch.Tensor:
        return _reduce_tensor(torch, obj)
    return NotImplemented


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        return _reduce_special(obj)


_cloud_pickler: type | None = None


def _cloudpickler() -> type:
    """A cloudpickle Pickler with the same overrides (built on first use: cloudpickle is only
    needed for functions and ``__main__`` classes)."""
    global _cloud_pickler
    if _cloud_pickler is None:
        import cloudpickle

        class _CloudPickler(cloudpickle.Pickler):  # type: ignore[misc]
            def reducer_override(self, obj: Any) -> Any:
                reduced = _reduce_special(obj)
                if reduced is NotImplemented:
                    return super().reducer_override(obj)
                return reduced

        _cloud_pickler = _CloudPickler
    return _cloud_pickler


def _rebuild_memoryview(buffer: Any, fmt: str, shape: tuple[int, ...]) -> memoryview:
    return memoryview(buffer).cast("B").cast(fmt, shape)  # type: ignore[call-overload]


def _reduce_memoryview(view: memoryview) -> Any:
    """A memoryview keeps its format and shape; a large one travels out-of-band.

    ``memoryview.cast`` rebuilds native single-character formats. For others (big-endian,
    structs) the view is rebuilt over a copy of the object it views, when it views all of it,
    or else over a numpy array, which reads most buffer formats.
    """
    if len(view.format.removeprefix("@")) == 1:
        if not view.contiguous:
            return (_rebuild_memoryview, (view.tobytes(), view.format, view.shape))
        return (_rebuild_memoryview, (pickle.PickleBuffer(view), view.format, view.shape))
    whole = memoryview(view.obj)
    if (whole.format, whole.shape, whole.strides) == (view.format, view.shape, view.strides):
        return (memoryview, (view.obj,))
    import numpy

    try:
        return (memoryview, (numpy.array(view),))
    except (ValueError, RuntimeError, TypeError) as exc:
        raise TypeError(f"cannot pickle a memoryview of format {view.format!r}: {exc}") from exc


def _rebuild_tensor(array: Any, dtype_name: str, shape: tuple[int, ...]) -> Any:
    import torch

    tensor = torch.from_numpy(array)
    dtype = getattr(torch, dtype_name)
    if tensor.dtype != dtype:
        tensor = tensor.view(dtype)
    return tensor.reshape(shape)


def _reduce_tensor(torch: Any, tensor: Any) -> Any:
    """A plain dense CPU tensor as a numpy view of its memory (out-of-band); anything else
    (autograd, sparse, GPU, a subclass) pickles the way torch does it."""
    if (
        tensor.device.type != "cpu"
        or tensor.layout != torch.strided
        or tensor.requires_grad
        or not tensor.is_contiguous()
        or tensor.is_quantized
    ):
        return NotImplemented
    dtype_name = str(tensor.dtype).removeprefix("torch.")
    flat = tensor.reshape(-1)
    try:
        array = flat.numpy()
    except (TypeError, RuntimeError):  # bfloat16 and friends: no numpy dtype, same bytes
        if tensor.element_size() != 2:
            return NotImplemented
        array = flat.view(torch.int16).numpy()
    return (_rebuild_tensor, (array, dtype_name, tuple(tensor.shape)))


def pickle_with_buffers(
    obj: Any, by_value: bool = False, min_bytes: int | None = None, collect: bool = True
) -> tuple[bytes, list[memoryview], list[Shared[Any]]]:
    """Pickle ``obj``; buffers of ``min_bytes`` or more are returned apart (out-of-band), and
    so are the ``fj.shared`` handles met on the way (as references).

    Fastest first: ``pickle.dumps`` (C, no per-object hook) when torch is not loaded; then a
    pickler with the overrides above; cloudpickle when those fail or the stream refers to
    ``__main__`` (a worker does not re-run the caller's script), or when ``by_value``.
    """
    buffers: list[memoryview] = []
    handles: list[Shared[Any]] = []
    keep_apart = _BufferSorter(buffers, OUT_OF_BAND_MIN_BYTES if min_bytes is None else min_bytes)
    if not by_value and not live_handles and "torch" not in sys.modules:
        # The common case, on the hot path: nothing here needs a hook (no fj.shared handle
        # exists in this process, no tensor can be met), so the C pickler alone.
        try:
            stream = pickle.dumps(obj, PROTOCOL, buffer_callback=keep_apart)
            if b"__main__" not in stream:
                return stream, buffers, handles
        except Exception:
            pass
        buffers.clear()

    previous = collect_handles(handles if collect else None)
    try:
        if not by_value:
            try:
                if "torch" not in sys.modules:  # the C pickler, no per-object hook: fastest
                    stream = pickle.dumps(obj, PROTOCOL, buffer_callback=keep_apart)
                else:
                    stream = _dump(_Pickler, obj, keep_apart)
            except Exception:  # a memoryview? (the overrides handle it) or cloudpickle's job
                buffers.clear()
                handles.clear()
                try:
                    stream = _dump(_Pickler, obj, keep_apart)
                except Exception:
                    stream = b"__main__"
            if b"__main__" not in stream:
                return stream, buffers, handles
            buffers.clear()
            handles.clear()
        return _dump(_cloudpickler(), obj, keep_apart), buffers, handles
    finally:
        collect_handles(previous)


class _BufferSorter:
    """pickle's ``buffer_callback``: True keeps a buffer in the stream, False sets it apart."""

    __slots__ = ("buffers", "threshold")

    def __init__(self, buffers: list[memoryview], threshold: int) -> None:
        self.buffers = buffers
        self.threshold = threshold

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # neither C nor Fortran contiguous: inline
            return True
        if raw.nbytes < self.threshold:
            return True
        self.buffers.append(raw)
        return False


def _dump(pickler: type, obj: Any, buffer_callback: Callable[[Any], Any]) -> bytes:
    out = io.BytesIO()
    pickler(out, PROTOCOL, buffer_callback=buffer_callback).dump(obj)
    return out.getvalue()


def pack(
    obj: Any,
    pool: shm.SegmentPool | None,
    *,
    by_value: bool = False,
    min_bytes: int | None = None,
    collect: bool = True,
) -> Packed:
    """Pickle ``obj`` for another process, copying large buffers into one segment.

    With a ``pool`` the segment comes from it and returns to it (``Packed.release``); without,
    the segment is the Packed's own (a function or an ``fj.shared`` object, kept for as long as
    workers may need it). When no shared memory can be had, everything goes in the stream.
    ``collect=False`` (a worker's results): ``fj.shared`` handles made here travel by value.
    """
    if min_bytes is None:
        min_bytes = OUT_OF_BAND_MIN_BYTES
    if not by_value and not live_handles and "torch" not in sys.modules:
        # The hot path (every task): a small object with nothing to set apart or hook.
        sorter = _BufferSorter([], min_bytes)
        try:
            stream = pickle.dumps(obj, PROTOCOL, buffer_callback=sorter)
        except Exception:
            stream = b"__main__"
        if not sorter.buffers and len(stream) < min_bytes and b"__main__" not in stream:
            return Packed(stream)
    stream, buffers, handles = pickle_with_buffers(obj, by_value, min_bytes, collect)
    stream_in_segment = len(stream) >= min_bytes
    if not buffers and not stream_in_segment:
        return Packed(stream, handles=tuple(handles))
    offsets = []
    size = 0
    for buffer in buffers:
        offsets.append(size)
        size = shm.align(size + buffer.nbytes)
    stream_span = (size, len(stream)) if stream_in_segment else None
    if stream_span is not None:
        size += len(stream)
    try:
        segment = pool.acquire(size) if pool is not None else shm.Segment(max(size, 1))
    except OSError:  # no shared memory anywhere: the socket still works
        return Packed(pickle.dumps(obj, PROTOCOL), handles=tuple(handles))
    for offset, buffer in zip(offsets, buffers, strict=True):
        segment.write(offset, buffer)
    if stream_span is not None:
        segment.write(stream_span[0], stream)
    segment.fresh = False
    spans = tuple((offset, buffer.nbytes) for offset, buffer in zip(offsets, buffers, strict=True))
    return Packed(
        None if stream_in_segment else stream,
        spans,
        segment,
        stream_span,
        tuple(handles),
        pool,
    )


def descriptor_bytes(raw: tuple[Any, ...]) -> int:
    """Bytes an object occupies on the wire and in its segment."""
    if is_inline(raw):
        (stream,) = raw
        return len(stream)
    descriptor = view(Descriptor, raw)
    stream = descriptor.stream
    size = len(stream) if stream is not None else 0
    size += sum(length for _, length in descriptor.spans)
    if descriptor.stream_span is not None:
        size += descriptor.stream_span[1]
    return size


def unpack(
    descriptor: tuple[Any, ...],
    fds: list[int],
    on_unmapped: Callable[[int], None] | None = None,
) -> Any:
    """Rebuild an object from a descriptor and the frame's fds, without copying its buffers.

    ``on_unmapped(segment_id)`` runs when the last view of the mapping is gone (so the sender
    may reuse a pooled segment).
    """
    if is_inline(descriptor):
        (stream,) = descriptor
        return pickle.loads(stream)
    mapping = map_descriptor(descriptor, fds, on_unmapped)
    return unpack_mapped(descriptor, mapping)


def map_descriptor(
    descriptor: tuple[Any, ...],
    fds: list[int],
    on_unmapped: Callable[[int], None] | None = None,
    readonly: bool = False,
) -> Any:
    """Map the segment a descriptor names (the fd may be closed afterwards)."""
    import weakref

    record = view(Descriptor, descriptor)
    fd, size = fds[record.fd_index], record.size
    mapping = shm.map_readonly(fd, size) if readonly else shm.map_private(fd, size)
    if on_unmapped is not None and record.segment_id:
        weakref.finalize(mapping, on_unmapped, record.segment_id)
    return mapping


class MappingCache:
    """The other side's pooled segments, mapped once and kept: when the sender reuses a segment
    for the next task, the receiver reads it through the same mapping, without the page faults
    (~0.45 us per 4 kB page, about as long as reading the data) that a fresh mapping takes.

    The mapping is shared and writable, so a task may write to its arguments as to any unpickled
    object; the sender never reads them back (after a worker death it pickles the task again).
    Each use gets its own exporter object over the mapping, and ``on_unmapped`` runs when the
    last view of that use is gone: then the sender may overwrite the segment.
    """

    def __init__(self, max_entries: int = 32) -> None:
        self.max_entries = max_entries
        self._mappings: OrderedDict[int, Any] = OrderedDict()  # segment id -> mmap

    def view(
        self,
        descriptor: tuple[Any, ...],
        fds: list[int],
        on_unmapped: Callable[[int], None],
    ) -> Any:
        """A buffer over the segment's mapping, for one use."""
        import ctypes
        import mmap
        import weakref

        _, _, _, size, segment_id, fd_index = view(Descriptor, descriptor)
        mapping = self._mappings.get(segment_id)
        if mapping is None:
            mapping = mmap.mmap(fds[fd_index], size, flags=mmap.MAP_SHARED)
            self._mappings[segment_id] = mapping
            if len(self._mappings) > self.max_entries:
                self._mappings.popitem(last=False)  # views still alive keep it mapped
        else:
            self._mappings.move_to_end(segment_id)
        exporter = (ctypes.c_char * size).from_buffer(mapping)
        weakref.finalize(exporter, on_unmapped, segment_id)
        return exporter

    def forget(self, segment_ids: list[int]) -> None:
        """The sender closed these segments: stop keeping them mapped."""
        for segment_id in segment_ids:
            self._mappings.pop(segment_id, None)


def unpack_mapped(descriptor: tuple[Any, ...], mapping: Any) -> Any:
    record = view(Descriptor, descriptor)
    whole = memoryview(mapping).cast("B")
    buffers = [whole[offset : offset + length] for offset, length in record.spans]
    stream: Any = record.stream
    if stream is None:  # the stream lives in the segment too
        assert record.stream_span is not None
        start, length = record.stream_span
        stream = whole[start : start + length]
    try:
        return pickle.loads(stream, buffers=buffers)
    finally:
        del whole, buffers, stream
