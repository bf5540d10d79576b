"""The worker process of the process backend: receive tasks, run them, send results.

::

    caller's manager thread                         this process
    ───────────────────────                         ────────────
    ("init", ...)          ──── socket ────>   set sys.path, run initializer
                           <───────────────    ("ready", pid)
    ("tasks", [t1, t2..], shared)  ────────>   map the segments that came with it (fds)
                                               for each task:
                                                 write task id to the shared "current" slot
                                                 unpickle items -> run fn -> pickle results
                           <───────────────    ("results", [r1, r2..], peak_rss, released)
                                                 (batched; large results in segments)
    ("release", [ids])     ────────────────>   the caller let go of these result segments
    ("forget", [ids])      ────────────────>   drop these fj.shared objects
    ("unmap", [ids])       ────────────────>   the caller closed these argument segments
    ("drop function", key) ────────────────>   a function carrying large data is done with
    ("stop",)              ────────────────>   exit 0

Large arguments and results travel in shared-memory segments (``buffers.py``): the worker maps
the caller's segments (keeping the mappings, since the caller reuses its segments) and reports
them ``released`` once the task's objects are gone, so the caller can reuse them; it writes
results into segments from its own pool, which it reuses once the caller says ``release``.

The "current task" slot is a few bytes of memory shared with the caller (a memfd): when this
process dies, the caller reads it to know exactly which task was running, without a message per
task. A watchdog thread blocks on a pipe whose write end only the caller holds: when the caller
dies, even by SIGKILL, the read returns and this worker kills its own process group.
"""

from __future__ import annotations

import mmap
import os
import pickle
import resource
import signal
import socket
import struct
import sys
import threading
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any

from ..engine.shared import Shared
from .buffers import MappingCache, Packed, map_descriptor, pack, unpack_mapped
from .failures import exception_record, unpicklable_result_record
from .shm import SegmentPool
from .wire import MAX_FDS_PER_FRAME

if TYPE_CHECKING:
    from ..engine.execute import ChunkRun

# The "current task" slot: (id of the task running, or 0; sequence number of the last task this
# worker started). The caller reads the id when the worker dies (whom to blame) and the sequence
# number to know which queued tasks have not started, so it may take them back (see ASK_AFTER).
SLOT = struct.Struct("<qq")

# A queued task that waited at least this long since the caller sent it asks the caller before
# it starts ("may run"); the caller may meanwhile have given it to an idle worker (work
# stealing). A task that waited less never asks: the caller only takes back tasks older than
# process.STEAL_AFTER_SECONDS, and the margin between the two makes sure the caller sees this
# worker's slot write for any task it started without asking. Short waits are the common case,
# so the round trip is paid only behind a slow task.
ASK_AFTER_SECONDS = 0.02

# Results are sent at least this often while a batch of tasks runs, so that a caller sees them
# stream back and can refill this worker's queue before it runs dry. Larger: fewer messages;
# smaller: lower latency. 2 ms keeps messages under ~1% of a core (benchmarks/bench_engine.py).
RESULT_FLUSH_SECONDS = 0.002

# A task of a job that has seen a worker die (the caller marks it ``stream``) sends the results
# of its items so far at least this often while it runs: a crash then costs the last few
# milliseconds of work, not the chunk (issue 21). Off until a fault is seen: one message more per
# 5 ms of a long chunk is cheap, but not free.
PARTIAL_SECONDS = 0.005

# Must match the caller's mirror of this cache (process.py: FUNCTION_CACHE_SIZE).
FUNCTION_CACHE_SIZE = 64
# Result segments the caller still maps that this worker remembers, to reuse when released.
# Beyond this (a caller keeping many results) the worker forgets them: no reuse, no fd pile-up.
MAX_LENT_SEGMENTS = 64
# Free result segments a worker keeps for reuse.
KEEP_FREE_BYTES = 128 * 1024 * 1024


class _Unreadable:
    """Cached in place of a function that failed to unpickle, so every task using it says so."""

    def __init__(self, message: str) -> None:
        self.message = message


def _watch_parent(watchdog_fd: int) -> None:
    try:
        os.read(watchdog_fd, 1)  # returns only when every write end (the caller) is gone
    finally:
        try:
            os.killpg(0, signal.SIGKILL)  # this worker and anything its tasks started
        finally:
            os._exit(1)


def _failure_records(run: ChunkRun, start: int, stop: int) -> list[tuple[Any, ...]]:
    """The failures of items ``start..stop-1`` of ``run``, placed relative to ``start`` (each
    results message numbers its own values from 0)."""
    records = []
    failures = run.failures
    while run.failures_sent < len(failures) and failures[run.failures_sent][0] < stop:
        position, exc, tb = failures[run.failures_sent]
        records.append(exception_record(position - start, exc, tb))
        run.failures_sent += 1
    return records


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _encode_values(values: list[Any], failures: list[tuple[Any, ...]], pool: SegmentPool) -> Packed:
    """Pickle the results; a result that cannot be pickled becomes a failure of its own."""
    from .wire import dumps

    try:
        return pack(values, pool, collect=False)
    except Exception:
        pass
    for position, value in enumerate(values):
        try:
            dumps(value)
        except Exception as exc:
            values[position] = None
            failures.append(unpicklable_result_record(position, value, exc))
    return pack(values, pool, collect=False)


class Worker:
    def __init__(self, sock: socket.socket, slot: mmap.mmap | None) -> None:
        self.sock = sock
        self.slot = slot
        # The main thread runs tasks; the flusher thread sends results that would otherwise wait
        # behind a slow next task. This lock guards the outbox and every send on the socket.
        # Reentrant: a garbage-collection callback (on_unmapped) may run while it is held.
        self.lock = threading.RLock()
        self.results_waiting = threading.Event()  # set when the outbox becomes non-empty
        self.answers: dict[int, bool] = {}  # replies to "may run", by sequence number
        self.functions: OrderedDict[int, Any] = OrderedDict()
        self.outbox: list[tuple[Any, ...]] = []
        self.outbox_segments = 0  # fds the next results message will carry
        self.last_flush = time.monotonic()
        self.pool = SegmentPool(KEEP_FREE_BYTES)
        self.lent: dict[int, Packed] = {}  # result segments the caller maps, by segment id
        self.released: list[int] = []  # caller segments whose last view here is gone
        self.shared: dict[int, list[Any]] = {}  # fj.shared id -> [mapping, descriptor, object]
        self.inbox: deque[tuple[Any, ...] | None] = deque()  # tasks received, None = stop
        self.mappings = MappingCache()  # the caller's argument segments
        # The streaming task running now (its id and its results so far), read by the flusher.
        self.running: tuple[int, Any] | None = None

    def send(self, message: Any, fds: list[int] | None = None) -> None:
        from .wire import send_frame

        with self.lock:
            send_frame(self.sock, pickle.dumps(message, pickle.HIGHEST_PROTOCOL), fds)

    def post(self, entry: tuple[Any, ...], segment: bool = False) -> None:
        """Queue a task's reply for the next results message (sent now if it is full)."""
        with self.lock:
            self.outbox.append(entry)
            if len(self.outbox) == 1:
                self.results_waiting.set()
            if segment:
                self.outbox_segments += 1
                if self.outbox_segments >= MAX_FDS_PER_FRAME:
                    self._flush_locked()

    def flush_late(self) -> None:
        """The flusher thread: results older than RESULT_FLUSH_SECONDS go out even while the
        main thread is busy with a long task (one finished at +0 s is not held until +5 s)."""
        while True:
            self.results_waiting.wait(None if self.running is None else PARTIAL_SECONDS)
            time.sleep(RESULT_FLUSH_SECONDS)
            with self.lock:
                self.results_waiting.clear()
                if self.running is not None:
                    self._post_partial_locked()
                if self.outbox and time.monotonic() - self.last_flush >= RESULT_FLUSH_SECONDS:
                    self._flush_locked()
                elif self.outbox:
                    self.results_waiting.set()  # the main thread flushed a moment ago: later

    def flush(self) -> None:
        with self.lock:
            self._flush_locked()

    def _post_partial_locked(self) -> None:
        """Send the streaming task's results since the last partial (flusher thread)."""
        assert self.running is not None
        task_id, run = self.running
        start, stop = run.sent, len(run.values)
        if stop == start or time.monotonic() - run.start_time < PARTIAL_SECONDS:
            return
        values = run.values[start:stop]
        failures = _failure_records(run, start, stop)
        payload = _encode_values(values, failures, self.pool)
        run.sent = stop
        now = time.monotonic()
        self.outbox.append((task_id, "partial", run.start_time, now, payload, failures))
        if payload.segment is not None:
            self.outbox_segments += 1
        self._flush_locked()  # now: a crash right after must not take it along

    def _flush_locked(self) -> None:
        from .wire import send_frame

        if self.outbox:
            fds: list[int] = []
            entries = []
            sent: list[Packed] = []
            for task_id, status, start, end, values, failures in self.outbox:
                if isinstance(values, Packed):
                    if values.segment is not None:
                        sent.append(values)
                        fds.append(values.segment.fd)
                    values = values.descriptor(len(fds) - 1)
                entries.append((task_id, status, start, end, values, failures))
            released, self.released = self.released, []
            message = ("results", entries, _peak_rss(), released)
            send_frame(self.sock, pickle.dumps(message, pickle.HIGHEST_PROTOCOL), fds)
            self.outbox = []
            for packed in sent:
                self.lend(packed)
        self.outbox_segments = 0
        self.last_flush = time.monotonic()

    def lend(self, packed: Packed) -> None:
        """The caller maps this result segment now: reuse it only once the caller releases it."""
        assert packed.segment is not None
        if len(self.lent) < MAX_LENT_SEGMENTS:
            self.lent[packed.segment.segment_id] = packed
        else:  # never reused: the caller's mapping keeps the memory as long as it needs it
            packed.pool = None
            packed.segment.close()

    def on_released(self, segment_ids: list[int]) -> None:
        for segment_id in segment_ids:
            packed = self.lent.pop(segment_id, None)
            if packed is not None:
                packed.release()

    def on_unmapped(self, segment_id: int) -> None:
        with self.lock:  # the flusher thread swaps the list out
            self.released.append(segment_id)  # reported to the caller with the next results

    def resolve_function(self, key: int, payload: Any) -> Any:
        functions = self.functions
        if payload is not None:
            try:
                fn = _unpack(payload)
            except Exception as exc:
                fn = _Unreadable(
                    f"the function could not be unpickled in the worker: "
                    f"{type(exc).__name__}: {exc}"
                )
            functions[key] = fn
            if len(functions) > FUNCTION_CACHE_SIZE:
                functions.popitem(last=False)
            return fn
        functions.move_to_end(key)
        return functions[key]

    def map_segments(self, descriptor: Any, fds: list[int], report: bool) -> Any:
        """Map a descriptor's segment now (its fd is closed when the message is handled)."""
        if descriptor is None or len(descriptor) == 1:
            return (descriptor, None)
        if report and descriptor[4]:  # a pooled segment of the caller's: likely seen before
            return (descriptor, self.mappings.view(descriptor, fds, self.on_unmapped))
        return (descriptor, map_descriptor(descriptor, fds))

    def receive_shared(self, entries: list[tuple[int, Any]], fds: list[int]) -> None:
        for shared_id, descriptor in entries:
            mapping = None
            if len(descriptor) > 1:
                mapping = map_descriptor(descriptor, fds, None, readonly=True)
            self.shared[shared_id] = [mapping, descriptor, _UNRESOLVED]

    def resolve_shared(self, shared_id: int) -> Any:
        entry = self.shared.get(shared_id)
        if entry is None:
            raise RuntimeError(
                f"fj.shared object {shared_id} is not available in this worker: the handle "
                f"was garbage-collected in the caller while a task still used it; keep a "
                f"reference to it until the map has finished"
            )
        if entry[2] is _UNRESOLVED:
            entry[2] = _unpack((entry[1], entry[0]))  # (descriptor, mapping)
        return entry[2]

    def run_task(self, spec: tuple[Any, ...]) -> None:
        from ..engine.execute import ChunkRun, run_chunk  # after start-up: a light zygote

        task_id, fn_key, fn_payload, kind, payload, first_index, seed, seq, sent_at, stream = spec
        if self.slot is not None:  # from here on, a crash is this task's doing
            SLOT.pack_into(self.slot, 0, task_id, seq)
        fn = self.resolve_function(fn_key, fn_payload)  # cached even if the task is not run
        # The clock is read after the slot write: see ASK_AFTER_SECONDS.
        if time.monotonic() - sent_at >= ASK_AFTER_SECONDS and not self.may_run(seq):
            if self.slot is not None:
                SLOT.pack_into(self.slot, 0, 0, seq)  # taken back: nothing of ours runs
            return
        if isinstance(fn, _Unreadable):
            self.post((task_id, "unreadable function", 0.0, 0.0, fn.message, ()))
            return
        try:
            items = _unpack(payload)
        except Exception as exc:
            message = (
                f"the task's arguments could not be unpickled in the worker: "
                f"{type(exc).__name__}: {exc}"
            )
            self.post((task_id, "unreadable argument", 0.0, 0.0, message, ()))
            return
        del payload, spec  # the task's segment is released once the items are gone
        run = ChunkRun()
        if stream and len(items) > 1:
            with self.lock:
                self.running = (task_id, run)
            self.results_waiting.set()  # the flusher now wakes every PARTIAL_SECONDS
        try:
            run_chunk(fn, kind, items, first_index, seed, catch_interrupt=True, run=run)
        finally:
            if self.running is not None:
                with self.lock:
                    self.running = None
        del items
        start = run.sent  # the items before it went out as partial results
        values = run.values[start:] if start else run.values
        failures = _failure_records(run, start, len(run.values))
        values_payload = _encode_values(values, failures, self.pool)
        self.post(
            (task_id, "done", run.start_time, run.end_time, values_payload, failures),
            segment=values_payload.segment is not None,
        )

    def may_run(self, seq: int) -> bool:
        """Ask the caller whether this long-queued task is still ours (it may have been given to
        an idle worker meanwhile); other messages are handled while the answer comes."""
        self.flush()  # results finished before this task should not wait for the answer
        self.send(("may run", seq))
        while seq not in self.answers:
            if not self.receive():
                raise EOFError
        return self.answers.pop(seq)

    def serve(self) -> None:
        import select

        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        while True:
            if not self.inbox and not self.receive():
                return
            while self.inbox:
                spec = self.inbox.popleft()
                if spec is None:  # "stop"
                    return
                try:
                    self.run_task(spec)
                    if self.slot is not None:
                        SLOT.pack_into(self.slot, 0, 0, spec[7])
                    del spec
                    if time.monotonic() - self.last_flush >= RESULT_FLUSH_SECONDS:
                        self.flush()
                    # Read ahead: a "release" queued behind the next tasks lets this worker
                    # reuse a result segment instead of faulting in a fresh one.
                    while poller.poll(0):
                        if not self.receive():
                            return
                except BaseException:  # SystemExit from a task: send what finished first
                    self.flush()
                    raise
            self.flush()

    def receive(self) -> bool:
        """Read one message: tasks join the inbox, the rest is handled now. False at the end."""
        from .wire import close_fds, recv_frame

        try:
            frame, fds = recv_frame(self.sock)
        except EOFError:
            return False
        try:
            message = pickle.loads(frame)
            kind = message[0]
            if kind == "tasks":
                self.receive_shared(message[2], fds)
                self.inbox.extend(self.prepare(spec, fds) for spec in message[1])
        finally:
            close_fds(fds)  # every segment is mapped by now
        if kind == "stop":
            self.inbox.append(None)
        elif kind == "release":
            self.on_released(message[1])
        elif kind == "forget":
            for shared_id in message[1]:
                self.shared.pop(shared_id, None)
        elif kind == "unmap":
            self.mappings.forget(message[1])
        elif kind == "drop function":
            self.functions.pop(message[1], None)
        elif kind == "may run":
            self.answers[message[1]] = message[2]
        return True

    def prepare(self, spec: tuple[Any, ...], fds: list[int]) -> tuple[Any, ...]:
        task_id, fn_key, fn_payload, kind, payload, first_index, seed, seq, sent_at, stream = spec
        if fn_payload is not None:
            fn_payload = self.map_segments(fn_payload, fds, report=False)
        payload = self.map_segments(payload, fds, report=True)
        return (task_id, fn_key, fn_payload, kind, payload, first_index, seed, seq, sent_at, stream)


_UNRESOLVED: Any = object()


def _unpack(prepared: tuple[Any, Any]) -> Any:
    """Unpickle a (descriptor, mapping) pair from ``Worker.prepare``."""
    descriptor, mapping = prepared
    if mapping is None:
        return pickle.loads(descriptor[0])
    return unpack_mapped(descriptor, mapping)


def main(sock_fd: int, watchdog_fd: int, slot_fd: int) -> None:
    """Entry point of a worker process (see process.py for how it is started)."""
    try:
        _serve(sock_fd, watchdog_fd, slot_fd)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        os._exit(0)  # the caller went away: nothing to report to, nobody to tell


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM (a timeout, a cancelled or abandoned task, a shutdown) unwinds the worker like
    an exception, so ``finally`` blocks and ``atexit`` hooks (``run_on_devices``' teardown:
    free the model, empty the CUDA cache) run before it exits; the caller sends SIGKILL after a
    grace period if they take too long."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise SystemExit(128 + signum)


def _die_by_sigterm_if_terminated() -> None:
    """Registered first, so it runs last at exit: end by the signal itself, as if unhandled."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        os.kill(os.getpid(), signal.SIGTERM)


def _serve(sock_fd: int, watchdog_fd: int, slot_fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    import atexit

    atexit.register(_die_by_sigterm_if_terminated)
    signal.signal(signal.SIGTERM, _on_sigterm)
    threading.Thread(target=_watch_parent, args=(watchdog_fd,), daemon=True).start()
    sock = socket.socket(fileno=sock_fd)
    sock.setblocking(True)
    slot = mmap.mmap(slot_fd, SLOT.size) if slot_fd >= 0 else None
    worker = Worker(sock, slot)
    Shared.resolver = worker.resolve_shared
    from .wire import close_fds, recv_frame

    frame, fds = recv_frame(sock)
    init = pickle.loads(frame)
    _, worker_id, sys_path, depth, init_payload, shared_entries, device, gpus, authkey = init
    worker.receive_shared(shared_entries, fds)
    if init_payload is not None:
        init_payload = worker.map_segments(init_payload, fds, report=False)
    close_fds(fds)
    sys.path[:] = sys_path
    os.environ["FORKJOIN_WORKER_DEPTH"] = str(depth)
    os.environ["FORKJOIN_WORKER_ID"] = str(worker_id)
    from multiprocessing import process as mp_process  # light: not the whole package

    mp_process.current_process().authkey = authkey
    from ..engine.context import WorkerContext, install

    install(WorkerContext(worker_id, "process", device=device, gpus=tuple(gpus)))
    if init_payload is not None:
        try:
            initializer, initargs = _unpack(init_payload)
            initializer(*initargs)
        except BaseException as exc:
            from .wire import short_traceback

            worker.send(("init_error", f"{type(exc).__name__}: {exc}", short_traceback(exc)))
            sys.exit(3)
    threading.Thread(target=worker.flush_late, name="forkjoin-flusher", daemon=True).start()
    worker.send(("ready", os.getpid()))
    worker.serve()
