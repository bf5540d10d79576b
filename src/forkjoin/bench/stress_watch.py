"""What a stress run watches beside the job: worker pids and resident memory (sampled), the
worker it SIGKILLs every ``kill_every`` seconds, and what may leak (processes, shared memory).

Kept apart from ``stress.py`` (the run and its report) so each stays readable.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psutil

# RSS sampling period of the monitor thread.
SAMPLE_SECONDS = 0.1

# -- leak accounting -----------------------------------------------------------------------------

_SHM_PREFIXES = ("forkjoin", "fj", "psm_", "wnsm_")


def marker_parent(marker_dir: str | Path | None) -> str | Path | None:
    """Where the "kill" fault's markers go (one file per item that killed its worker): a
    memory file system where there is one. On a disk the file creation alone cost ~10% of the
    workers' time in a run with 1,000 kills, which is the harness's cost, not the engine's."""
    if marker_dir is None and os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return "/dev/shm"
    return marker_dir


def shm_names() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if n.lower().startswith(_SHM_PREFIXES)}
    except OSError:
        return set()


def mapped_segments() -> set[str]:
    """Shared-memory files this process maps or holds open (forkjoin's are unlinked at once,
    so they show only here, as '/dev/shm/forkjoin-XXXX (deleted)')."""
    import psutil

    proc = psutil.Process()
    found: set[str] = set()
    try:
        for m in proc.memory_maps(grouped=True):
            if "/dev/shm/" in m.path:
                found.add(m.path)
        for f in proc.open_files():
            if "/dev/shm/" in f.path:
                found.add(f.path)
    except psutil.Error:
        pass
    return found


def is_resource_tracker(process: psutil.Process) -> bool:
    """multiprocessing's resource tracker (Dask's local cluster starts one): one per
    interpreter, it lives until the interpreter exits and holds nothing of the run's."""
    try:
        return "multiprocessing.resource_tracker" in " ".join(process.cmdline())
    except psutil.Error:
        return False


def alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss(pid: int) -> int:
    """Resident memory of ``pid`` (0 if it is gone). One read of /proc/PID/statm where there
    is one: the monitor runs beside the timed job, and a ``psutil.Process`` per new worker pid
    (thousands in a run with kills) took ~8% of the caller's GIL from the engine."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except FileNotFoundError:
        if os.path.isdir("/proc"):
            return 0
    except (OSError, IndexError, ValueError):
        return 0
    import psutil

    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return predicate()
        time.sleep(0.05)
    return True


# -- the run -------------------------------------------------------------------------------------


class Monitor(threading.Thread):
    """Samples RSS, collects worker pids and, if asked, SIGKILLs a worker every period."""

    def __init__(self, pool: Any, kill_every: float | None, seed: int) -> None:
        super().__init__(name="fj-stress-monitor", daemon=True)
        self.pool = pool
        self.kill_every = kill_every
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.pids: set[int] = set()
        self.killed = 0
        self.peak_caller = 0
        self.peak_workers = 0
        self.samples: list[tuple[float, int]] = []
        self.started_at = time.monotonic()

    def run(self) -> None:
        next_kill = self.started_at + (self.kill_every or 0)
        me = os.getpid()
        while not self.stop.wait(SAMPLE_SECONDS):
            pids = list(self.pool.worker_pids())
            self.pids.update(pids)
            caller = rss(me)
            self.peak_caller = max(self.peak_caller, caller)
            self.peak_workers = max(self.peak_workers, sum(rss(p) for p in pids))
            now = time.monotonic()
            self.samples.append((now - self.started_at, caller))
            if self.kill_every and now >= next_kill and pids:
                next_kill = now + self.kill_every
                try:
                    os.kill(self.rng.choice(pids), signal.SIGKILL)
                    self.killed += 1
                except ProcessLookupError:
                    pass
