"""Shared-memory segments: anonymous in-memory files that two processes map, passed as fds.

A segment is a file with no name: ``memfd_create`` on Linux, or elsewhere a file in a directory
that is unlinked the moment it is opened. It travels to the other process as a file descriptor
over the socket both already share (``SCM_RIGHTS``); each side maps it. Because it has no name,
it cannot leak: the kernel frees it when the last descriptor and mapping are gone, even when
every process involved is SIGKILLed. That is why segments are not ``multiprocessing.shared_memory``
(named ``/dev/shm`` entries that a killed process leaves behind) and why a memfd is not limited by
the size of ``/dev/shm`` (64 MB in a default Docker container).

Fresh pages are expensive: the kernel zeroes and maps each one on first touch, so writing into a
new segment runs at ~0.8 GiB/s against ~10 GiB/s into one already touched. A ``SegmentPool``
therefore keeps segments that came back and reuses them.

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
# Segment sizes are rounded up to this, so payloads of nearly equal size reuse one segment.
SIZE_GRANULE = 64 * 1024
# A free segment is reused for a request at least this fraction of its size (a 16 MB segment
# is not spent on a 70 kB payload).
MIN_FILL = 0.5
# A pool keeps at most this many bytes of free segments; the least recently used go first.
# Larger: more reuse after bursts; smaller: less idle memory held per process.
KEEP_FREE_BYTES = 256 * 1024 * 1024


class SegmentUnavailable(OSError):
    """No shared memory could be had (every location is full): send the bytes inline instead."""


def align(offset: int) -> int:
    return (offset + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


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

    __slots__ = ("segment_id", "fd", "size", "view", "holders", "__weakref__")

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
        weakref.finalize(self, _close, self.fd, self.view)

    def close(self) -> None:
        _close(self.fd, self.view)

    def __repr__(self) -> str:
        return f"Segment(id={self.segment_id}, size={self.size}, holders={self.holders})"


class SegmentPool:
    """Hands out segments and takes them back for reuse, keeping at most ``keep_bytes`` free.

    A segment is held while anyone may still read it: ``hold`` and ``drop`` count those holders
    (thread-safe: the caller's threads acquire, the manager thread drops), and the last
    ``drop`` returns it to the free list.
    """

    def __init__(self, keep_bytes: int = KEEP_FREE_BYTES) -> None:
        self.keep_bytes = keep_bytes
        self._free: OrderedDict[int, Segment] = OrderedDict()  # least recently freed first
        self._free_bytes = 0
        self._lock = threading.Lock()
        self._closed = False
        self.created = 0  # segments made fresh (the rest were reused): for tests and benchmarks
        self.reused = 0
        self.on_close: Callable[[int], None] | None = None  # told each closed segment's id

    def acquire(self, size: int) -> Segment:
        """A segment of at least ``size`` bytes with one holder (the caller)."""
        with self._lock:
            best: Segment | None = None
            for segment in self._free.values():
                if size <= segment.size and size >= segment.size * MIN_FILL:
                    if best is None or segment.size < best.size:
                        best = segment
            if best is not None:
                del self._free[best.segment_id]
                self._free_bytes -= best.size
                best.holders = 1
                self.reused += 1
                return best
        rounded = max(SIZE_GRANULE, -(-size // SIZE_GRANULE) * SIZE_GRANULE)
        segment = Segment(rounded)
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
            if self._closed or segment.size > self.keep_bytes:
                self._close(segment)
                return
            self._free[segment.segment_id] = segment
            self._free_bytes += segment.size
            while self._free_bytes > self.keep_bytes:
                _, oldest = self._free.popitem(last=False)
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
            self._free_bytes = 0


def map_private(fd: int, size: int) -> mmap.mmap:
    """Map a segment received from the other process copy-on-write: the receiver sees the data
    without a copy, may write to it (as to any unpickled object) and never changes the sender's."""
    return mmap.mmap(fd, size, access=mmap.ACCESS_COPY)


def map_readonly(fd: int, size: int) -> mmap.mmap:
    """Map a segment many tasks read (``fj.shared``): writing to it raises, so no task can change
    what the next task on the same worker sees."""
    return mmap.mmap(fd, size, access=mmap.ACCESS_READ)
