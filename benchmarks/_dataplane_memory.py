"""Peak memory of the caller plus one contender's processes, sampled in a background thread.

Every contender's pool is alive at once (they take turns), and all of them are children of this
process, so "the process tree" of a contender is: this process + the processes that contender
started (found by which children appeared while its pool started, and their descendants: Ray's
workers are children of its raylet). Other contenders' idle processes are not counted.

Two figures per window:

- RSS: the sum of resident set sizes, sampled every ``interval`` seconds (cheap: one read of
  ``/proc/PID/statm`` per process). Shared memory is counted once *per process that maps it*:
  a 1 GiB shared segment read by two workers and the caller counts up to 3 GiB.
- PSS: the sum of proportional set sizes (``/proc/PID/smaps_rollup``), where a shared page is
  split between the processes mapping it, so the sum is the memory the tree really uses. It costs
  about 1 ms per GiB mapped, so it is sampled every ``pss_every``-th time only (Linux only).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

HAVE_SMAPS_ROLLUP = os.path.exists(f"/proc/{os.getpid()}/smaps_rollup")


def pss_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def descendants(roots: Iterable[int]) -> set[int]:
    """``roots`` that are still alive, and all their descendants."""
    found: set[int] = set()
    for pid in roots:
        try:
            proc = psutil.Process(pid)
            found.add(pid)
            found.update(child.pid for child in proc.children(recursive=True))
        except psutil.Error:
            continue
    return found


def children_now() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


@dataclass
class Peak:
    rss: int = 0  # bytes, peak of the sum
    pss: int | None = None
    start_rss: int = 0  # the first sample: the tree at rest, before the run
    start_pss: int | None = None
    samples: int = 0
    processes: int = 0  # how many processes were counted (at the end of the window)


class TreeSampler:
    """``with sampler.window(pids) as peak:`` samples this process + ``pids`` (and their
    descendants) until the block ends; ``peak`` then holds the peaks."""

    def __init__(
        self, interval: float = 0.02, pss_every: int = 10, refresh_every: float = 0.5
    ) -> None:
        self.interval = interval
        self.pss_every = pss_every if HAVE_SMAPS_ROLLUP else 0
        self.refresh_every = refresh_every
        self._lock = threading.Lock()
        self._roots: set[int] = set()
        self._procs: list[psutil.Process] = []
        self._peak: Peak | None = None
        self._refreshed = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def window(self, roots: Iterable[int]) -> _Window:
        return _Window(self, set(roots))

    # -- the thread ------------------------------------------------------------------------------

    def _refresh(self) -> None:
        pids = {os.getpid()} | descendants(self._roots)
        procs = []
        for pid in sorted(pids):
            try:
                procs.append(psutil.Process(pid))
            except psutil.Error:
                continue
        self._procs = procs
        self._refreshed = time.monotonic()

    def sample(self, with_pss: bool) -> None:
        """One sample into the open window (also called at the window's edges)."""
        with self._lock:
            peak = self._peak
            if peak is None:
                return
            if time.monotonic() - self._refreshed > self.refresh_every:
                self._refresh()
            rss = 0
            pss = 0
            for proc in self._procs:
                try:
                    rss += proc.memory_info().rss
                except psutil.Error:
                    continue
                if with_pss:
                    pss += pss_of(proc.pid) or 0
            if not peak.samples:
                peak.start_rss = rss
                peak.start_pss = pss if with_pss else None
            peak.samples += 1
            peak.processes = len(self._procs)
            peak.rss = max(peak.rss, rss)
            if with_pss:
                peak.pss = pss if peak.pss is None else max(peak.pss, pss)

    def _run(self) -> None:
        count = 0
        while not self._stop.wait(self.interval):
            count += 1
            with_pss = bool(self.pss_every) and count % self.pss_every == 0
            self.sample(with_pss)

    def _open(self, roots: set[int]) -> Peak:
        with self._lock:
            self._roots = roots
            self._peak = Peak()
            self._refresh()
        self.sample(bool(self.pss_every))
        assert self._peak is not None
        return self._peak

    def _close(self) -> None:
        self.sample(bool(self.pss_every))
        with self._lock:
            self._peak = None


class _Window:
    def __init__(self, sampler: TreeSampler, roots: set[int]) -> None:
        self.sampler = sampler
        self.roots = roots

    def __enter__(self) -> Peak:
        return self.sampler._open(self.roots)

    def __exit__(self, *exc: object) -> None:
        self.sampler._close()
