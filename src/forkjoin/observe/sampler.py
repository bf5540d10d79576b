"""The worker side of the profiler: a sampling thread, started by the first profiled call.

::

    caller                                   each worker process (or rank, or thread pool)
    ──────                                   ─────────────────────────────────────────────
    ProfileSession: a temp folder   ──fn──>  ProfiledCall(fn) runs fn; its first call starts
      wrap(fn) -> ProfiledCall               a Sampler thread for that folder
      request "k" / "k stop" ──file──>       Sampler: every SAMPLE_SECONDS, the stack of each
                                               thread inside a profiled call (and, in a worker,
      merge <──────── <pid>.json ─────────     the worker's own loop between calls); its totals
                                               written atomically every FLUSH_SECONDS or when
                                               the caller asks (a flush, or the final one)

Why a thread that reads ``sys._current_frames()`` rather than a signal timer or ``py-spy``: it
needs no ptrace rights, it does not interrupt the user's system calls, and it sees wall time
(a task waiting on I/O counts), which is what a user of a parallel map waits for. Why files
rather than the task protocol: results travel unchanged, so profiling works the same on every
backend (process, threads, inline, a training gang) without touching any of them.

Kept to the standard library and small: every worker that runs a profiled call imports it.
"""

from __future__ import annotations

import functools
import json
import os
import random
import sys
import threading
import time
from typing import Any

# Sampling period: 100 samples/s per worker, py-spy's default rate. Each wake-up costs the
# worker a GIL hand-over and a timer (~50-100 us of CPU on a loaded machine, more than the
# sample itself, ~5 us), so the rate, not the stack walk, sets the overhead; at 100/s a
# share of 70% over a couple of worker-seconds is still within +-3 points (one sigma).
SAMPLE_SECONDS = 0.01
# The longest period a sampler backs off to on an oversubscribed machine (see ``_loop``).
MAX_SAMPLE_SECONDS = 0.04
LATE_FACTOR = 4  # a wake-up this many periods late counts as very late
# While a sampler runs, the GIL is handed over this often instead of every 5 ms. Otherwise the
# sampler, waiting up to 5 ms for the GIL, mostly gets it where the worker releases it (a send,
# a read): samples would pile up on I/O calls. Only the sampler contends, so the cost stays
# one hand-over per sample; this sets only how soon the sampler gets in.
SWITCH_INTERVAL_SECONDS = 0.0005
# A sample stands for the time since the previous one, but at most this many periods: when the
# machine is oversubscribed and the worker was descheduled for a while, that time would
# otherwise all land on whichever line happened to run next (a large, random weight).
MAX_SAMPLE_WEIGHT = 3
# How often a sampler writes its totals unasked (what a live view or a crashed worker leaves).
FLUSH_SECONDS = 0.5
# Outside pool workers, a profiled call at least this long writes the totals when it returns.
END_FLUSH_MIN_SECONDS = 0.02
# How often the sampler looks for the caller's request file (a stat: ~2 us).
REQUEST_CHECK_SECONDS = 0.01
REQUEST_FILE = "request"
# A sampler with no profiled call for this long ends itself (its totals written): the caller
# may have gone without a word; a later call starts a new one.
IDLE_STOP_SECONDS = 30.0

_samplers: dict[str, Sampler] = {}
_samplers_lock = threading.Lock()


class Sampler:
    """Samples the stacks of the threads running profiled calls in this process.

    Threads: ``active`` and ``calls`` are written by the calling threads (one dict item
    assignment each, atomic under the GIL); everything else belongs to the sampler thread.
    """

    def __init__(self, directory: str, interval: float) -> None:
        self.directory = directory
        self.interval = interval
        self.active: dict[int, int] = {}  # thread ident -> depth of profiled calls on it
        self.home: int | None = None  # the thread a worker process runs its calls on
        self.calls = 0
        # A worker's own loop between calls is sampled too (waiting, unpickling, sending); not
        # in the caller's process, where the "loop" is the user's program.
        self.sample_between_calls = os.environ.get("FORKJOIN_WORKER_DEPTH", "0") != "0"
        self._codes: dict[int, Any] = {}  # id(code) -> code: keeps ids from being reused
        self._seconds: dict[tuple[int, ...], float] = {}  # stack of code ids -> seconds
        self._between: dict[tuple[int, ...], float] = {}  # since the last call ended
        self._samples = 0
        self._answered = ""
        self._cpu_start: float | None = None  # the sampler thread's CPU clock at its start
        self._sampler_cpu = 0.0  # as of its last flush (a calling thread's flush reuses it)
        self._path = os.path.join(directory, f"{os.getpid()}-{id(self)}.json")
        self._flush_lock = threading.Lock()  # the sampler thread and a calling thread may flush
        self.closed = False  # set (under _flush_lock) by the final write: no file after it
        self.thread = threading.Thread(target=self._run, name="fj-profile-sampler", daemon=True)

    # -- sampling (the sampler thread) -----------------------------------------------------------

    def _stack(self, frame: Any) -> tuple[int, ...]:
        codes = self._codes
        ids = []
        while frame is not None:
            code = frame.f_code
            key = id(code)
            if key not in codes:
                codes[key] = code
            ids.append(key)
            frame = frame.f_back
        ids.reverse()  # root first
        return tuple(ids)

    def _sample(self, elapsed: float) -> None:
        frames = sys._current_frames()
        active = self.active
        if active:
            if self._between:  # the wait before this call was part of the job: keep it
                for stack, seconds in self._between.items():
                    self._seconds[stack] = self._seconds.get(stack, 0.0) + seconds
                self._between.clear()
            target = self._seconds
            idents = list(active)
        elif self.sample_between_calls and self.home is not None:
            target = self._between  # kept only if another call follows (not after the last)
            idents = [self.home]
        else:
            return
        for ident in idents:  # each thread's wall time: thread-seconds, like worker-seconds
            frame = frames.get(ident)
            if frame is not None:
                stack = self._stack(frame)
                target[stack] = target.get(stack, 0.0) + elapsed
                self._samples += 1
        del frames

    def _run(self) -> None:
        last = next_check = time.monotonic()
        next_flush = last + FLUSH_SECONDS
        request_path = os.path.join(self.directory, REQUEST_FILE)
        self._cpu_start = time.thread_time()
        previous_switch = sys.getswitchinterval()
        sys.setswitchinterval(min(previous_switch, SWITCH_INTERVAL_SECONDS))
        try:
            self._loop(last, next_check, next_flush, request_path)
        finally:
            sys.setswitchinterval(previous_switch)
            with _samplers_lock:
                if _samplers.get(self.directory) is self:
                    del _samplers[self.directory]

    def _loop(self, last: float, next_check: float, next_flush: float, request_path: str) -> None:
        jitter = random.Random(os.getpid()).random
        calls_seen, last_active = self.calls, last
        interval = self.interval
        while True:
            # A jittered period: a fixed one could beat in step with a periodic workload.
            pause = interval * (0.5 + jitter())
            time.sleep(pause)
            now = time.monotonic()
            try:
                self._sample(min(now - last, MAX_SAMPLE_WEIGHT * interval))
            except Exception:  # a frame vanished mid-walk: skip this sample
                pass
            # Waking very late means the machine is heavily oversubscribed: a hand-over of the
            # GIL to a thread the OS then preempts can stall the worker for a time slice, so
            # sample less often there (and return to the asked rate once wake-ups are prompt).
            late = now - last - pause
            if late > LATE_FACTOR * interval:
                interval = min(interval * 2, MAX_SAMPLE_SECONDS)
            elif late < interval / 4 and interval > self.interval:
                interval = max(interval / 2, self.interval)
            last = now
            if now < next_check:
                continue
            next_check = now + REQUEST_CHECK_SECONDS
            request = _read(request_path)
            if request is None and not os.path.isdir(self.directory):
                break  # the caller is gone and took its folder: nothing to report to
            if self.active or self.calls != calls_seen:
                calls_seen, last_active = self.calls, now
            elif now - last_active > IDLE_STOP_SECONDS:
                self._flush(False)
                break
            if request and request != self._answered:
                self._answered = request
                final = request.endswith("stop")
                self._flush(final)
                if final:
                    break
            elif now >= next_flush:
                self._flush(False)
                next_flush = now + FLUSH_SECONDS

    # -- reporting -------------------------------------------------------------------------------

    def _flush(self, final: bool) -> None:
        """Write the totals so far (atomically: the caller never reads half a file). Nothing
        after the final write: the caller is removing the folder."""
        with self._flush_lock:
            if self.closed:
                return
            self._write(final)
            self.closed = final

    def _write(self, final: bool) -> None:
        index: dict[int, int] = {}
        frames: list[list[Any]] = []
        stacks = []
        idle = not self.active
        if self._cpu_start is not None and threading.current_thread() is self.thread:
            self._sampler_cpu = time.thread_time() - self._cpu_start
        for stack, seconds in list(self._seconds.items()):  # list(): one C call, GIL held
            row = []
            for key in stack:
                position = index.get(key)
                if position is None:
                    code = self._codes[key]
                    name = getattr(code, "co_qualname", code.co_name)
                    position = index[key] = len(frames)
                    frames.append([name, code.co_filename, code.co_firstlineno])
                row.append(position)
            stacks.append([row, seconds])
        data = {
            "pid": os.getpid(),
            "calls": self.calls,
            "samples": self._samples,
            "interval": self.interval,
            "answered": self._answered,
            "final": final,
            # this thread's own CPU time: what sampling cost (read only from this thread)
            "sampler_cpu": (
                time.thread_time() - self._cpu_start
                if self._cpu_start is not None and threading.current_thread() is self.thread
                else self._sampler_cpu
            ),
            "idle": idle,  # written between calls: complete up to here
            "frames": frames,
            "stacks": stacks,
        }
        temporary = self._path + ".tmp"
        try:
            with open(temporary, "w") as file:
                json.dump(data, file)
            os.replace(temporary, self._path)
        except OSError:  # the caller removed the folder meanwhile: it no longer wants this
            pass


def _read(path: str) -> str | None:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:
        return None


def sampler_for(directory: str, interval: float = SAMPLE_SECONDS) -> Sampler:
    """This process's sampler for a profiling session (started on first use)."""
    sampler = _samplers.get(directory)
    if sampler is not None:
        return sampler
    with _samplers_lock:
        sampler = _samplers.get(directory)
        if sampler is None:
            sampler = Sampler(directory, interval)
            request = _read(os.path.join(directory, REQUEST_FILE))
            if request is None and not os.path.isdir(directory) or (request or "").endswith("stop"):
                sampler.closed = True  # a call after the session ended: run it unsampled
                return sampler
            _samplers[directory] = sampler
            sampler._flush(False)  # the caller now knows this process took part
            sampler.thread.start()
        return sampler


class ProfiledCall:
    """``fn`` wrapped so that the time spent in it (and around it, in a worker) is sampled.

    Travels to workers in place of ``fn`` (the class by reference, ``fn`` as the backend
    pickles it); calls it with the same arguments and returns what it returns.
    """

    def __init__(
        self, fn: Any, directory: str, interval: float = SAMPLE_SECONDS, mark: str = ""
    ) -> None:
        self.fn = fn
        self.directory = directory
        self.interval = interval
        self.mark = mark  # what the caller reports this call as (e.g. a data stage's name)
        functools.update_wrapper(self, fn, updated=())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        sampler = _samplers.get(self.directory) or sampler_for(self.directory, self.interval)
        ident = threading.get_ident()
        active = sampler.active
        depth = active.get(ident, 0)
        active[ident] = depth + 1
        if sampler.home is None:
            sampler.home = ident
        sampler.calls += 1
        started = time.monotonic()
        try:
            return self.fn(*args, **kwargs)
        finally:
            if depth:
                active[ident] = depth
            else:
                del active[ident]
                # Outside a pool worker (a training rank), a call may be the process's last,
                # and the process may exit without a word (os._exit): write the totals now.
                # Only after calls long enough that a flush (~0.2 ms) is noise.
                if not sampler.sample_between_calls and (
                    time.monotonic() - started >= END_FLUSH_MIN_SECONDS
                ):
                    sampler._flush(False)

    def __repr__(self) -> str:
        return f"ProfiledCall({self.fn!r})"
