"""Shared-memory segments: anonymous in-memory files that two processes map, passed as fds.

A segment is a file with no name: ``memfd_create`` on Linux, or elsewhere a file in a directory
that is unlinked the moment it is opened. It travels to the other process as a file descriptor
over the socket both already share (``SCM_RIGHTS``); each side maps it. Because it has no name,
it cannot leak: the kernel frees it when the last descriptor and mapping are gone, even when
every process involved is SIGKILLed. That is why segments are not ``multiprocessing.shared_memory``
(named ``/dev/shm`` entries that a killed process leaves behind) and why a memfd is not limited by
the size of ``/dev/shm`` (64 MB in a default Docker container).

Fresh pages are expensive: the kernel zeroes and maps each one on first touch, so writing into a
new segment through a mapping runs at ~0.8 GiB/s here against ~10 GiB/s into one already touched
(``pwrite`` into a new segment, with no page-table work, runs at ~1.5 GiB/s: ``Segment.write``
uses it the first time). A ``SegmentPool`` therefore keeps segments that came back and reuses
them.

Where memfd is missing, or ``FORKJOIN_SHM_DIR`` names a directory, segments are unlinked files in
that directory (``/dev/shm`` by default). A directory too small for a segment (``posix_fallocate``
reports ENOSPC) is abandoned, with a one-line warning, for the temporary directory: page-cache
backed files, slower but never a crash.
"""

from __future__ import annotations

import errno
import itertools
import mmap
import os
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable

# Environment variable naming a directory for segments instead of memfd (tests, small /dev/shm).
SHM_DIR_ENV = "FORKJOIN_SHM_DIR"
# Offsets of buffers inside a segment are multiples of this: numpy wants aligned data, and 64
# bytes is a cache line.
ALIGNMENT = 64
# Segment sizes are rounded up to a size class: a page at least, then four classes per doubling
# (at most 25% unused), so payloads of nearly equal size land in the same class and reuse it.
SMALLEST_SEGMENT = 4096
CLASSES_PER_DOUBLING = 4
# A pool keeps at most this many bytes, and this many segments, free; the least recently used
# go first. Larger: more reuse after bursts; smaller: less idle memory and fewer open fds.
KEEP_FREE_BYTES = 256 * 1024 * 1024
KEEP_FREE_SEGMENTS = 64


class SegmentUnavailable(OSError):
    """No shared memory could be had (every location is full): send the bytes inline instead."""


def align(offset: int) -> int:
    return (offset + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def size_class(size: int) -> int:
    """The segment size that serves ``size`` bytes."""
    if size <= SMALLEST_SEGMENT:
        return SMALLEST_SEGMENT
    step = max(SMALLEST_SEGMENT, 1 << max(0, size.bit_length() - 1 - CLASSES_PER_DOUBLING // 2))
    return -(-size // step) * step


class _Storage:
    """Where new segments are created; falls back once from a full directory to the temp dir."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.directory: str | None = None
        self._configured = False

    def _configure(self) -> None:
        chosen = os.environ.get(SHM_DIR_ENV)
        if chosen:
            self.directory = chosen
        elif hasattr(os, "memfd_create"):
            self.directory = None
        elif os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
            self.directory = "/dev/shm"
        else:
            import tempfile

            self.directory = tempfile.gettempdir()
        self._configured = True

    def create(self, size: int) -> int:
        """A new anonymous file of ``size`` bytes, as an fd (close-on-exec)."""
        with self._lock:
            if not self._configured:
                self._configure()
            directory = self.directory
        if directory is None:
            fd = os.memfd_create("forkjoin", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, size)
            except BaseException:
                os.close(fd)
                raise
            return fd
        try:
            return _create_in(directory, size)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.ENOENT, errno.EACCES):
                raise
            import tempfile

            fallback = tempfile.gettempdir()
            if os.path.realpath(directory) == os.path.realpath(fallback):
                raise SegmentUnavailable(exc.errno, f"no space for shared memory in {fallback}")
            with self._lock:
                if self.directory == directory:
                    self.directory = fallback
                    problem = (
                        f"has no room for a {size / 2**20:.1f} MB shared-memory segment"
                        if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                        else f"cannot hold shared-memory segments ({exc.strerror})"
                    )
                    warnings.warn(
                        f"forkjoin: {directory} {problem}; using memory-mapped files in "
                        f"{fallback} instead (slower). Give the container more shared memory "
                        f"(docker --shm-size) or point {SHM_DIR_ENV} elsewhere to avoid it.",
                        RuntimeWarning,
                        stacklevel=2,
                    )
            return self.create(size)

    def reset(self) -> None:
        """Read the configuration again (tests change ``FORKJOIN_SHM_DIR``)."""
        with self._lock:
            self._configured = False


storage = _Storage()


def _create_in(directory: str, size: int) -> int:
    """An unlinked file in ``directory`` with its space reserved (so a full tmpfs fails here with
    ENOSPC instead of killing a process with SIGBUS when the mapping is written)."""
    flags = os.O_RDWR | os.O_CLOEXEC
    if hasattr(os, "O_TMPFILE"):
        try:
            fd = os.open(directory, flags | os.O_TMPFILE, 0o600)  # never has a name at all
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            fd = _named_then_unlinked(directory)
    else:
        fd = _named_then_unlinked(directory)
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)
        else:
            os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _named_then_unlinked(directory: str) -> int:
    import tempfile

    fd, path = tempfile.mkstemp(prefix="forkjoin-", dir=directory)
    os.unlink(path)
    return fd


_segment_ids = itertools.count(1)


def _close(fd: int, view: mmap.mmap) -> None:
    try:
        view.close()
    except BufferError:  # still exported (a memoryview is alive): the mapping goes with it
        pass
    try:
        os.close(fd)
    except OSError:
        pass


class Segment:
    """One anonymous file and this process's writable shared mapping of it."""

    __slots__ = ("segment_id", "fd", "size", "view", "holders", "fresh", "_closer", "__weakref__")

    def __init__(self, size: int) -> None:
        self.segment_id = next(_segment_ids)
        self.size = size
        self.fd = storage.create(size)
        try:
            self.view = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED)
        except BaseException:
            os.close(self.fd)
            raise
        self.holders = 0  # who still needs the contents (a pending task, workers mapping it)
        self.fresh = True  # never written: its pages do not exist yet
        self._closer = weakref.finalize(self, _close, self.fd, self.view)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Copy ``data`` in at ``offset``: with ``pwrite`` while the segment is fresh (twice as
        fast as faulting new pages in through the mapping), through the mapping after that."""
        if self.fresh:
            view = memoryview(data).cast("B")
            while view:
                written = os.pwrite(self.fd, view, offset)
                view, offset = view[written:], offset + written
        else:
            self.view[offset : offset + len(data)] = data

    def close(self) -> None:
        self._closer()  # runs once: a later garbage collection must not close a reused fd number

    def __repr__(self) -> str:
        return f"Segment(id={self.segment_id}, size={self.size}, holders={self.holders})"


class SegmentPool:
    """Hands out segments and takes them back for reuse, keeping at most ``keep_bytes`` free.

    A segment is held while anyone may still read it: ``hold`` and ``drop`` count those holders
    (thread-safe: the caller's threads acquire, the manager thread drops), and the last
    ``drop`` returns it to the free list.
    """

    def __init__(
        self, keep_bytes: int = KEEP_FREE_BYTES, keep_segments: int = KEEP_FREE_SEGMENTS
    ) -> None:
        self.keep_bytes = keep_bytes
        self.keep_segments = keep_segments
        self._free: OrderedDict[int, Segment] = OrderedDict()  # least recently freed first
        self._by_size: dict[int, list[int]] = {}  # size class -> ids of free segments
        self._free_bytes = 0
        self._lock = threading.Lock()
        self._closed = False
        self.created = 0  # segments made fresh (the rest were reused): for tests and benchmarks
        self.reused = 0
        self.on_close: Callable[[int], None] | None = None  # told each closed segment's id

    def acquire(self, size: int) -> Segment:
        """A segment of at least ``size`` bytes with one holder (the caller)."""
        wanted = size_class(size)
        with self._lock:
            same_size = self._by_size.get(wanted)
            if same_size:
                segment = self._free.pop(same_size.pop())
                self._free_bytes -= segment.size
                segment.holders = 1
                self.reused += 1
                return segment
        segment = Segment(wanted)
        segment.holders = 1
        self.created += 1
        return segment

    def hold(self, segment: Segment) -> None:
        with self._lock:
            segment.holders += 1

    def drop(self, segment: Segment) -> None:
        """One holder is done with it; the last one returns it to the pool (or closes it)."""
        with self._lock:
            segment.holders -= 1
            if segment.holders > 0:
                return
            segment.fresh = False
            if self._closed or segment.size > self.keep_bytes:
                self._close(segment)
                return
            self._free[segment.segment_id] = segment
            self._by_size.setdefault(segment.size, []).append(segment.segment_id)
            self._free_bytes += segment.size
            while self._free_bytes > self.keep_bytes or len(self._free) > self.keep_segments:
                _, oldest = self._free.popitem(last=False)
                self._by_size[oldest.size].remove(oldest.segment_id)
                self._free_bytes -= oldest.size
                self._close(oldest)

    def _close(self, segment: Segment) -> None:
        segment.close()
        if self.on_close is not None:
            self.on_close(segment.segment_id)

    @property
    def free_bytes(self) -> int:
        return self._free_bytes

    def close(self) -> None:
        """Close every free segment; segments still held close when their last holder drops."""
        with self._lock:
            self._closed = True
            for segment in self._free.values():
                self._close(segment)
            self._free.clear()
            self._by_size.clear()
            self._free_bytes = 0


def map_private(fd: int, size: int) -> mmap.mmap:
    """Map a segment received from the other process copy-on-write: the receiver sees the data
    without a copy, may write to it (as to any unpickled object) and never changes the sender's."""
    return mmap.mmap(fd, size, access=mmap.ACCESS_COPY)


def map_readonly(fd: int, size: int) -> mmap.mmap:
    """Map a segment many tasks read (``fj.shared``): writing to it raises, so no task can change
    what the next task on the same worker sees."""
    return mmap.mmap(fd, size, access=mmap.ACCESS_READ)
