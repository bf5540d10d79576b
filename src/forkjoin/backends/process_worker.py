"""The worker process of the process backend: receive tasks, run them, send results.

The messages and their order are drawn in ``protocol.py``. Here::

    Init    -> set sys.path, run the initializer -> Ready
    Tasks   -> map the segments that came with it (fds) into the inbox; for each task:
               write its id to the shared "current task" slot, unpickle the items, run the
               function, pickle the results -> a ResultEntry in the next Results (batched,
               sent by the main thread or, behind a slow task, by the flusher thread)
    Release / Forget / Unmap / DropFunction / MayRun answers -> handled between tasks
    Stop    -> exit 0

Large arguments and results travel in shared-memory segments (``buffers.py``): the worker maps
the caller's segments (keeping the mappings, since the caller reuses its segments) and reports
them ``released`` once the task's objects are gone, so the caller can reuse them; it writes
results into segments from its own pool, which it reuses once the caller says ``release``.

The "current task" slot is a few bytes of memory shared with the caller (a memfd): when this
process dies, the caller reads it to know exactly which task was running, without a message per
task. The process's start (signals, the caller watchdog, Init) is ``process_worker_start.py``.
"""

from __future__ import annotations

import mmap
import pickle
import resource
import socket
import struct
import threading
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any

from .buffers import MappingCache, Packed, map_descriptor, pack, unpack_mapped
from .failures import exception_record, unpicklable_result_record
from .process_wakeup import WakeUp
from .protocol import (
    DropFunction,
    Forget,
    MayRunAnswer,
    Msg,
    Release,
    Reply,
    SharedEntry,
    Tasks,
    TaskSpec,
    Unmap,
    is_inline,
    segment_id_of,
    view,
)
from .shm import SegmentPool
from .wire import MAX_FDS_PER_FRAME

if TYPE_CHECKING:
    from ..core.execute import ChunkRun

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
    def __init__(self, sock: socket.socket, slot: mmap.mmap | None, watchdog_fd: int = -1) -> None:
        self.sock = sock
        self.slot = slot
        # The main thread runs tasks; the flusher thread sends results that would otherwise wait
        # behind a slow next task (and watches for the caller's death: process_wakeup.py). This
        # lock guards the outbox and every send on the socket.
        # Reentrant: a garbage-collection callback (on_unmapped) may run while it is held.
        self.lock = threading.RLock()
        self.results_waiting = WakeUp(watchdog_fd)  # set when the outbox becomes non-empty
        self.answers: dict[int, list[int]] = {}  # replies to "may run", by sequence number
        self.granted = 0  # the caller takes back no task up to this number (see may_run)
        self.refused: set[int] = set()  # tasks up to it that the caller took back
        self.functions: OrderedDict[int, Any] = OrderedDict()
        self.outbox: list[tuple[Any, ...]] = []
        self.outbox_segments = 0  # fds the next results message will carry
        self.last_flush = time.monotonic()
        self.pool = SegmentPool(KEEP_FREE_BYTES)
        self.lent: dict[int, Packed] = {}  # result segments the caller maps, by segment id
        self.released: list[int] = []  # caller segments whose last view here is gone
        self.shared: dict[int, list[Any]] = {}  # fj.shared id -> [mapping, descriptor, object]
        # Tasks received: (spec, mapped function, mapped arguments) from ``prepare``; None: stop
        self.inbox: deque[tuple[TaskSpec, Any, Any] | None] = deque()
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
        main thread is busy with a long task (one finished at +0 s is not held until +5 s).
        It ends the process when the caller dies (``WakeUp.wait``)."""
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
        self.outbox.append((task_id, _PARTIAL, run.start_time, now, payload, failures))
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
            message = (_RESULTS, entries, _peak_rss(), released)  # a protocol.Results
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
                fn = unpack_prepared(payload)
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
        if descriptor is None or is_inline(descriptor):
            return (descriptor, None)
        if report and segment_id_of(descriptor):  # a pooled segment of the caller's: seen before
            return (descriptor, self.mappings.view(descriptor, fds, self.on_unmapped))
        return (descriptor, map_descriptor(descriptor, fds))

    def receive_shared(self, entries: list[SharedEntry], fds: list[int]) -> None:
        for shared_id, descriptor in entries:
            mapping = None
            if not is_inline(descriptor):
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
            entry[2] = unpack_prepared((entry[1], entry[0]))  # (descriptor, mapping)
        return entry[2]

    def run_task(self, spec: TaskSpec, fn_payload: Any, payload: Any) -> None:
        """Run one task; its function (if sent with it) and arguments are mapped (``prepare``)."""
        from ..core.execute import ChunkRun, run_chunk  # after start-up: a light zygote

        task_id, fn_key, _, kind, _, first_index, seed, seq, sent_at, stream = spec
        if self.slot is not None:  # from here on, a crash is this task's doing
            SLOT.pack_into(self.slot, 0, task_id, seq)
        fn = self.resolve_function(fn_key, fn_payload)  # cached even if the task is not run
        # The clock is read after the slot write: see ASK_AFTER_SECONDS.
        if seq in self.refused or (
            seq > self.granted
            and time.monotonic() - sent_at >= ASK_AFTER_SECONDS
            and not self.may_run(seq)
        ):
            self.refused.discard(seq)
            if self.slot is not None:
                SLOT.pack_into(self.slot, 0, 0, seq)  # taken back: nothing of ours runs
            return
        if isinstance(fn, _Unreadable):
            self.post((task_id, Reply.UNREADABLE_FUNCTION.value, 0.0, 0.0, fn.message, ()))
            return
        try:
            items = unpack_prepared(payload)
        except Exception as exc:
            message = (
                f"the task's arguments could not be unpickled in the worker: "
                f"{type(exc).__name__}: {exc}"
            )
            self.post((task_id, Reply.UNREADABLE_ARGUMENT.value, 0.0, 0.0, message, ()))
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
            (task_id, _DONE, run.start_time, run.end_time, values_payload, failures),
            segment=values_payload.segment is not None,
        )

    def may_run(self, seq: int) -> bool:
        """Ask the caller whether this long-queued task, and every task queued behind it, is
        still ours (some may have been given to an idle worker meanwhile); other messages are
        handled while the answer comes."""
        newest = seq
        for entry in self.inbox:
            if entry is not None:
                newest = max(newest, entry[0][7])  # TaskSpec.seq
        self.flush()  # results finished before this task should not wait for the answer
        self.send((Msg.MAY_RUN.value, newest))  # a protocol.MayRun
        while newest not in self.answers:
            if not self.receive():
                raise EOFError
        self.refused.update(self.answers.pop(newest))
        self.granted = newest
        return seq not in self.refused

    def serve(self) -> None:
        import select

        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        while True:
            if not self.inbox and not self.receive():
                return
            while self.inbox:
                entry = self.inbox.popleft()
                if entry is None:  # Stop
                    return
                try:
                    seq = entry[0].seq
                    self.run_task(*entry)
                    if self.slot is not None:
                        SLOT.pack_into(self.slot, 0, 0, seq)
                    del entry
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
            message = pickle.loads(frame)  # a protocol record, as a plain tuple
            kind = message[0]
            if kind == Msg.TASKS:  # map its segments now: the fds close below
                tasks = view(Tasks, message)
                self.receive_shared(tasks.shared, fds)
                self.inbox.extend(self.prepare(spec, fds) for spec in tasks.specs)
        finally:
            close_fds(fds)  # every segment is mapped by now
        match kind:
            case Msg.TASKS:
                pass
            case Msg.STOP:
                self.inbox.append(None)
            case Msg.RELEASE:
                self.on_released(view(Release, message).segment_ids)
            case Msg.FORGET:
                for shared_id in view(Forget, message).shared_ids:
                    self.shared.pop(shared_id, None)
            case Msg.UNMAP:
                self.mappings.forget(view(Unmap, message).segment_ids)
            case Msg.DROP_FUNCTION:
                self.functions.pop(view(DropFunction, message).fn_key, None)
            case Msg.MAY_RUN:
                answer = view(MayRunAnswer, message)
                self.answers[answer.seq] = answer.refused
            case _:
                raise RuntimeError(f"unknown message from the caller: {kind!r}")
        return True

    def prepare(self, raw: tuple[Any, ...], fds: list[int]) -> tuple[TaskSpec, Any, Any]:
        """A received task, with its function (if it came along) and its arguments mapped, each
        as a (descriptor, mapping) pair that ``unpack_prepared`` reads."""
        spec = view(TaskSpec, raw)
        function = spec.function
        if function is not None:
            function = self.map_segments(function, fds, report=False)
        return spec, function, self.map_segments(spec.arguments, fds, report=True)


_UNRESOLVED: Any = object()
# Wire values bound once: an Enum member would pickle as a call to its class (protocol.py).
_RESULTS = Msg.RESULTS.value
_DONE = Reply.DONE.value
_PARTIAL = Reply.PARTIAL.value


def unpack_prepared(prepared: tuple[Any, Any]) -> Any:
    """Unpickle a (descriptor, mapping) pair from ``Worker.prepare``."""
    descriptor, mapping = prepared
    if mapping is None:  # an inline descriptor, (stream,)
        (stream,) = descriptor
        return pickle.loads(stream)
    return unpack_mapped(descriptor, mapping)
