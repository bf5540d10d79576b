"""Spill files of an exchange: where they live, how they are written and read, and how every one
of them is removed, whatever happens to the job.

::

    FORKJOIN_SPILL_DIR (default: the temp dir)
    └── forkjoin-spill-<pid>-<token>/      one per running plan, made by the caller
        ├── .owner                         flock()ed by the caller for as long as the plan runs
        ├── map-L-00003.arrow              one file per map task: its buckets, back to back, each
        └── .map-L-00003.arrow.<pid>.tmp   an Arrow IPC stream; renamed into place when complete

Lifetime (the no-leak rule that shared memory follows too):
- success or failure: the caller removes its directory when the plan's generator closes;
- a worker SIGKILLed mid-write: its staging file sits in the caller's directory, removed with it;
  the retried task writes the same name again, so a rerun never duplicates a bucket;
- the caller SIGKILLed: nobody is left to clean up, so the *next* plan that spills (any process)
  removes every ``forkjoin-spill-*`` directory whose ``.owner`` lock nobody holds. The kernel
  drops a dead process's flock, so this cannot mistake a live run for a dead one (a pid check
  could, after pid reuse).

Files are written uncompressed, so the reduce side memory-maps them and reads buckets without
a copy. Compression (LZ4 / ZSTD IPC) was not measured yet: worth trying where the spill
directory is on a slow or shared disk (benchmarks/bench_shuffle.py reports spill bytes).
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass

import pyarrow as pa

from ..errors import DataError

SPILL_DIR_ENV = "FORKJOIN_SPILL_DIR"
SPILL_PREFIX = "forkjoin-spill-"
OWNER_FILE = ".owner"


def spill_root() -> str:
    """The directory spill directories are made in: ``$FORKJOIN_SPILL_DIR`` or the temp dir."""
    return os.environ.get(SPILL_DIR_ENV) or tempfile.gettempdir()


def clean_stale(root: str) -> list[str]:
    """Remove spill directories under ``root`` whose owner is gone (its lock is free). Returns
    the paths removed. Safe to run while other plans spill: their locks are held."""
    removed: list[str] = []
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return removed
    for name in names:
        if not name.startswith(SPILL_PREFIX):
            continue
        path = os.path.join(root, name)
        try:
            fd = os.open(os.path.join(path, OWNER_FILE), os.O_RDONLY)
        except FileNotFoundError:
            # A directory without its owner file: the caller died between mkdir and creating
            # the file (microseconds), or it is being removed right now. Either way not live.
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # held: a live plan
        finally:
            os.close(fd)  # closing drops the lock we may have just taken
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


class SpillDir:
    """The caller's spill directory for one plan run: created on first use, locked while the
    plan runs, removed by ``close()`` (and by the next run if this process is killed)."""

    def __init__(self, root: str | None = None) -> None:
        self.root = os.path.abspath(root or spill_root())
        self._path: str | None = None
        self._lock_fd: int | None = None

    @property
    def path(self) -> str:
        if self._path is None:
            self._path = self._create()
        return self._path

    def _create(self) -> str:
        os.makedirs(self.root, exist_ok=True)
        clean_stale(self.root)
        path = os.path.join(self.root, f"{SPILL_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.mkdir(path, 0o700)
        fd = os.open(os.path.join(path, OWNER_FILE), os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._lock_fd = fd
        return path

    def close(self) -> None:
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)
            self._path = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


# -- the worker's side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """One bucket inside a map task's spill file: bytes [offset, offset + length)."""

    path: str
    offset: int
    length: int
    rows: int


def write_buckets(path: str, buckets: list[pa.Table]) -> list[Segment | None]:
    """Write ``buckets`` back to back into ``path`` (staged, then renamed), one IPC stream each;
    an empty bucket takes no space and gets None. Disk full: a DataError naming the directory,
    the bytes needed and the bytes free, and no file left behind."""
    directory = os.path.dirname(path)
    staging = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    segments: list[Segment | None] = []
    try:
        with open(staging, "wb") as handle:
            for table in buckets:
                if table.num_rows == 0:
                    segments.append(None)
                    continue
                start = handle.tell()
                with pa.ipc.new_stream(handle, table.schema) as writer:
                    writer.write_table(table)
                segments.append(Segment(path, start, handle.tell() - start, table.num_rows))
        os.replace(staging, path)
    except OSError as exc:
        try:
            os.unlink(staging)
        except FileNotFoundError:
            pass
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            needed = sum(t.nbytes for t in buckets)
            free = shutil.disk_usage(directory).free
            raise DataError(
                f"spilling to {directory} failed: no space left ({needed:,} bytes to write, "
                f"{free:,} free): set {SPILL_DIR_ENV} to a directory with more room, or add "
                f"workers' memory"
            ) from None
        raise
    except BaseException:
        try:
            os.unlink(staging)
        except FileNotFoundError:
            pass
        raise
    return segments


def read_segments(segments: list[Segment]) -> list[pa.Table]:
    """The buckets' tables, whose buffers point into the memory-mapped files: nothing is
    copied. ``read_buffer`` after a ``seek``, not ``read_at``: pyarrow's ``read_at`` returns
    ``bytes``, a copy of the segment (in bench_shuffle.py's sort the copy, and the slower
    reads of its unaligned buffers, made the reduce's read and sort of a 380 k-row bucket take
    79 ms instead of 48). The mapping outlives the file's removal (POSIX), so a table read here
    stays valid after the spill directory is gone."""
    tables = []
    maps: dict[str, pa.MemoryMappedFile] = {}
    for seg in segments:
        source = maps.get(seg.path)
        if source is None:
            source = maps[seg.path] = pa.memory_map(seg.path, "r")
        source.seek(seg.offset)
        tables.append(pa.ipc.open_stream(source.read_buffer(seg.length)).read_all())
    return tables
