"""The worker process of the process backend: receive tasks, run them, send results.

::

    caller's manager thread                         this process
    ───────────────────────                         ────────────
    ("init", ...)          ──── socket ────>   set sys.path, run initializer
                           <───────────────    ("ready", pid)
    ("tasks", [t1, t2..])  ────────────────>   for each task:
                                                 write task id to the shared "current" slot
                                                 unpickle items -> run fn -> pickle results
                           <───────────────    ("results", [r1, r2..], peak_rss)  (batched)
    ("stop",)              ────────────────>   exit 0

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
from collections import OrderedDict
from typing import Any

SLOT = struct.Struct("<q")

# Results are sent at least this often while a batch of tasks runs, so that a caller sees them
# stream back and can refill this worker's queue before it runs dry. Larger: fewer messages;
# smaller: lower latency. 2 ms keeps messages under ~1% of a core (benchmarks/bench_engine.py).
RESULT_FLUSH_SECONDS = 0.002

# Must match the caller's mirror of this cache (process.py: FUNCTION_CACHE_SIZE).
FUNCTION_CACHE_SIZE = 64


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


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _exception_record(position: int, exc: BaseException, tb_text: str) -> tuple[Any, ...]:
    from .wire import dumps

    try:
        payload: bytes | None = dumps(exc)
        pickle.loads(payload)  # type: ignore[arg-type]  # many exceptions pickle but cannot be rebuilt: check here
    except Exception:
        payload = None
    return (position, payload, type(exc).__name__, str(exc), tb_text)


def _encode_values(values: list[Any], failures: list[tuple[Any, ...]]) -> bytes:
    """Pickle the results; a result that cannot be pickled becomes a failure of its own."""
    from .wire import dumps

    try:
        return dumps(values)
    except Exception:
        pass
    for position, value in enumerate(values):
        try:
            dumps(value)
        except Exception as exc:
            values[position] = None
            message = (
                f"the result of this item could not be pickled in the worker "
                f"({type(exc).__name__}: {exc}); return plain data (numbers, strings, lists, "
                f"dicts, arrays) instead of {type(value).__name__} objects"
            )
            failures.append((position, None, "SerializationError", message, ""))
    return dumps(values)


class Worker:
    def __init__(self, sock: socket.socket, slot: mmap.mmap | None) -> None:
        self.sock = sock
        self.slot = slot
        self.functions: OrderedDict[int, Any] = OrderedDict()
        self.outbox: list[tuple[Any, ...]] = []
        self.last_flush = time.monotonic()

    def send(self, message: Any) -> None:
        from .wire import send_frame

        send_frame(self.sock, pickle.dumps(message, pickle.HIGHEST_PROTOCOL))

    def flush(self) -> None:
        if self.outbox:
            self.send(("results", self.outbox, _peak_rss()))
            self.outbox = []
        self.last_flush = time.monotonic()

    def resolve_function(self, key: int, payload: bytes | None) -> Any:
        functions = self.functions
        if payload is not None:
            try:
                fn = pickle.loads(payload)
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

    def run_task(self, spec: tuple[Any, ...]) -> None:
        from ..engine.execute import run_chunk

        task_id, fn_key, fn_payload, kind, payload, first_index, seed = spec
        if self.slot is not None:  # from here on, a crash is this task's doing
            SLOT.pack_into(self.slot, 0, task_id)
        fn = self.resolve_function(fn_key, fn_payload)
        if isinstance(fn, _Unreadable):
            self.outbox.append((task_id, "unreadable function", 0.0, 0.0, fn.message, ()))
            return
        try:
            items = pickle.loads(payload)
        except Exception as exc:
            message = (
                f"the task's arguments could not be unpickled in the worker: "
                f"{type(exc).__name__}: {exc}"
            )
            self.outbox.append((task_id, "unreadable argument", 0.0, 0.0, message, ()))
            return
        run = run_chunk(fn, kind, items, first_index, seed)
        failures = [_exception_record(pos, exc, tb) for pos, exc, tb in run.failures]
        values_payload = _encode_values(run.values, failures)
        self.outbox.append(
            (task_id, "done", run.start_time, run.end_time, values_payload, failures)
        )

    def serve(self) -> None:
        from .wire import recv_frame

        while True:
            try:
                message = pickle.loads(recv_frame(self.sock))
            except EOFError:
                return
            if message[0] == "stop":
                return
            specs = message[1]
            try:
                for spec in specs:
                    self.run_task(spec)
                    if self.slot is not None:
                        SLOT.pack_into(self.slot, 0, 0)
                    if time.monotonic() - self.last_flush >= RESULT_FLUSH_SECONDS:
                        self.flush()
            finally:  # SystemExit from a task: send what finished before the worker ends
                self.flush()


def main(sock_fd: int, watchdog_fd: int, slot_fd: int) -> None:
    """Entry point of a worker process (see process.py for how it is started)."""
    try:
        _serve(sock_fd, watchdog_fd, slot_fd)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        os._exit(0)  # the caller went away: nothing to report to, nobody to tell


def _serve(sock_fd: int, watchdog_fd: int, slot_fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    threading.Thread(target=_watch_parent, args=(watchdog_fd,), daemon=True).start()
    sock = socket.socket(fileno=sock_fd)
    sock.setblocking(True)
    slot = mmap.mmap(slot_fd, SLOT.size) if slot_fd >= 0 else None
    worker = Worker(sock, slot)
    from .wire import recv_frame

    _, worker_id, sys_path, depth, init_payload = pickle.loads(recv_frame(sock))
    sys.path[:] = sys_path
    os.environ["FORKJOIN_WORKER_DEPTH"] = str(depth)
    os.environ["FORKJOIN_WORKER_ID"] = str(worker_id)
    from ..engine.context import WorkerContext, install

    install(WorkerContext(worker_id, "process"))
    if init_payload is not None:
        try:
            initializer, initargs = pickle.loads(init_payload)
            initializer(*initargs)
        except BaseException as exc:
            from .wire import short_traceback

            worker.send(("init_error", f"{type(exc).__name__}: {exc}", short_traceback(exc)))
            sys.exit(3)
    worker.send(("ready", os.getpid()))
    worker.serve()
