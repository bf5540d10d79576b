"""Host jobs: long Spark tasks that each host one forkjoin worker, fed tasks over a socket.

::

    SparkBackend.submit --call--> Lane queue --> host thread --send--> host (a Spark task,
       (per resource profile)                     (one per host)  <-reply-- in a Python worker)
                                                      |                 run_remote(fn, spec)
                                                      |  the host's job: one partition, its
                                                      |  own job group; a dead worker ends it
                                                      v
                                  the call's Future: reply, or HostLost / timeout

Why hosts and not a job per task: a one-partition Spark job costs 0.1-0.7 s of scheduling on a
local Spark (benchmarks/bench_spark.py --designs), a call to a host ~1 ms. Spark still places
each host (its ResourceProfile: cpus, gpus), starts its Python worker, and ends it: a host whose
worker dies, or whose executor is lost, ends its job; the call it was running fails as a crash
(forkjoin's scheduler retries it) and a new host job replaces it.

The socket: the driver listens on the address executors already reach it at
(``spark.driver.host``; 127.0.0.1 for a local Spark); a host proves it holds the pool's random
key by HMAC challenge (``multiprocessing.connection``) before anything is unpickled. The key
travels to the host inside its Spark task, so Spark's own security (``spark.authenticate``, TLS)
guards it. Code and ``fj.shared`` objects are sent once per host, then named by key.
"""

from __future__ import annotations

import itertools
import os
import pickle
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.connection import Client, Connection, answer_challenge, deliver_challenge
from typing import Any, NamedTuple

import cloudpickle

from .protocol import RemoteKind
from .remote_task import TaskSpec, run_remote

# A host with nothing to do for this long ends its Spark task, freeing its core for other Spark
# jobs (forkjoin.data, the user's, another resource profile's hosts); the next call starts one
# again (~0.2-1 s). Long enough to span the gaps between a script's successive fj.map calls.
HOST_IDLE_SECONDS = 10.0
# Seconds a task may run past its timeout (its alarm did not fire: stuck in C code) before its
# host's job is cancelled, which kills the Python worker.
TIMEOUT_GRACE = 5.0
# How often waiting threads look at whether the backend closed.
POLL_SECONDS = 0.25
# Seconds a connecting peer has to prove it holds the key.
HANDSHAKE_SECONDS = 30.0

_tokens = itertools.count()


class HostCall(NamedTuple):
    """Driver -> host: run one task. Code and shared objects carry their bytes only the first
    time this host sees their key (``None`` after)."""

    function_key: str
    function: bytes | None
    setup_key: str | None
    setup: bytes | None
    spec: bytes  # the pickled TaskSpec (pickled at submit: an unpicklable item fails there)
    shared: dict[int, Any]  # fj.shared id -> value; only ids this host has not been sent


class HostLost(Exception):
    """A host ended (its worker died, its executor was lost, its job was cancelled)."""


# -- the host side (runs in a Spark Python worker) -----------------------------------------------


def host_partition(address: tuple[str, int], authkey: bytes, token: int) -> Callable[..., Any]:
    """The partition function of a host's one-partition job."""

    def run(_: Any) -> list[int]:
        connection = Client(address, authkey=authkey)
        try:
            connection.send(("hello", token, os.getpid()))
            serve(connection)
        finally:
            connection.close()
        return [token]

    return run


def serve(connection: Connection) -> None:
    """Answer calls until the driver sends None or goes away."""
    code: dict[str, Any] = {}
    shared: dict[int, Any] = {}
    while True:
        try:
            call = connection.recv()
        except (EOFError, OSError):
            return
        if call is None:
            return
        try:
            if call.function is not None:
                code[call.function_key] = cloudpickle.loads(call.function)
            if call.setup is not None and call.setup_key is not None:
                code[call.setup_key] = cloudpickle.loads(call.setup)
            shared.update(call.shared)
            setup = code[call.setup_key] if call.setup_key is not None else None
            spec: TaskSpec = pickle.loads(call.spec)
        except Exception as exc:  # code or items that do not unpickle here (a missing module)
            message = f"{type(exc).__name__}: {exc}"
            connection.send((RemoteKind.UNREADABLE.value, os.getpid(), message, None, None))
            continue
        values = [shared[i] for i in spec.shared_ids]
        reply = run_remote(code[call.function_key], spec, setup, values)
        try:
            connection.send(reply)
        except Exception as exc:  # the reply does not pickle: say so instead of dying
            message = f"{type(exc).__name__}: {exc}"
            connection.send((RemoteKind.UNREADABLE.value, os.getpid(), message, None, None))


# -- the driver side ------------------------------------------------------------------------------


class _Pending(NamedTuple):
    future: Future[Any]
    call: HostCall
    timeout: float | None


class Listener:
    """The driver's socket that hosts connect back to; hands each host's connection to the
    thread that started it, by token."""

    def __init__(self, host: str) -> None:
        self.authkey = secrets.token_bytes(32)
        self._socket = socket.create_server((host, 0))
        self._socket.settimeout(POLL_SECONDS)
        self.address: tuple[str, int] = (host, self._socket.getsockname()[1])
        self._arrived: dict[int, queue.Queue[tuple[Connection, int]]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(
            target=self._accept, name="forkjoin-spark-listener", daemon=True
        )
        self._thread.start()

    def expect(self, token: int) -> queue.Queue[tuple[Connection, int]]:
        with self._lock:
            return self._arrived.setdefault(token, queue.Queue())

    def forget(self, token: int) -> None:
        with self._lock:
            self._arrived.pop(token, None)

    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(
                target=self._greet, args=(sock,), name="forkjoin-spark-greet", daemon=True
            ).start()

    def _greet(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        connection = Connection(sock.detach())
        # A peer that stalls the handshake does not hold this thread for ever.
        stall = threading.Timer(HANDSHAKE_SECONDS, _shut, (connection,))
        stall.start()
        try:
            deliver_challenge(connection, self.authkey)
            answer_challenge(connection, self.authkey)
            kind, token, pid = connection.recv()
        except Exception:
            connection.close()  # not one of ours: nothing was unpickled before the HMAC check
            return
        finally:
            stall.cancel()
        with self._lock:
            waiting = self._arrived.get(token)
        if kind != "hello" or waiting is None:
            connection.close()
            return
        waiting.put((connection, pid))

    def close(self) -> None:
        self._closed = True
        self._socket.close()
        self._thread.join(timeout=5)


class Lane:
    """The hosts of one resource profile: up to ``size`` of them, started as calls arrive."""

    def __init__(
        self,
        size: int,
        listener: Listener,
        start_job: Callable[[Callable[..., Any], str], Future[Any]],
        cancel_group: Callable[[str], None],
        group_prefix: str,
    ) -> None:
        self.size = size
        self._listener = listener
        self._start_job = start_job
        self._cancel_group = cancel_group
        self._prefix = group_prefix
        self._calls: queue.Queue[_Pending | None] = queue.Queue()
        self._lock = threading.Lock()
        self._hosts: list[threading.Thread] = []
        self._closed = False
        self._running: dict[int, str] = {}  # id(future) -> the job group of the host running it

    def submit(self, call: HostCall, timeout: float | None) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the Spark backend is shut down")
            self._calls.put(_Pending(future, call, timeout))
            # Hosts start as calls come, up to the lane's size; one that finds nothing to do
            # ends after HOST_IDLE_SECONDS.
            if len(self._hosts) < self.size:
                self._start_host()
        return future

    def kill(self, future: Future[Any]) -> None:
        """Stop the host running this call (its worker dies; a new host replaces it)."""
        with self._lock:
            group = self._running.get(id(future))
        if group is not None:
            self._cancel_group(group)

    def _start_host(self) -> None:
        thread = threading.Thread(target=self._host, name="forkjoin-spark-host", daemon=True)
        self._hosts.append(thread)
        thread.start()

    def _host(self) -> None:
        try:
            while not self._closed:
                if not self._one_host():
                    return
        finally:
            with self._lock:
                self._hosts.remove(threading.current_thread())
                if not self._closed and not self._calls.empty() and not self._hosts:
                    self._start_host()  # calls came while this host was leaving

    def _one_host(self) -> bool:
        """Start one host job and serve calls through it; False once this host should stop."""
        token = next(_tokens)
        group = f"{self._prefix}-host-{token}"
        arrived = self._listener.expect(token)
        partition = host_partition(self._listener.address, self._listener.authkey, token)
        job = self._start_job(partition, group)
        try:
            connection = self._wait_connected(arrived, job, group)
        finally:
            self._listener.forget(token)
        if connection is None:  # the job ended before its host connected: fail one call
            self._fail_next(HostLost(f"a Spark task hosting a forkjoin worker failed: {_why(job)}"))
            return not self._closed and not self._calls.empty()
        job.add_done_callback(lambda _: connection.close())  # the job ended: wake recv()
        try:
            return self._serve(connection, group, job)
        finally:
            try:
                connection.send(None)
            except Exception:
                pass
            connection.close()
            if not job.done():
                try:
                    job.result(timeout=30)
                except Exception:
                    pass

    def _wait_connected(
        self, arrived: queue.Queue[tuple[Connection, int]], job: Future[Any], group: str
    ) -> Connection | None:
        while not self._closed:
            try:
                connection, _pid = arrived.get(timeout=POLL_SECONDS)
                return connection
            except queue.Empty:
                pass
            if job.done():
                return None
        self._cancel_group(group)  # closed while Spark had not started it: drop the job
        return None

    def _serve(self, connection: Connection, group: str, job: Future[Any]) -> bool:
        idle_since = time.monotonic()
        sent: set[Any] = set()  # code keys and fj.shared ids this host has
        while True:
            try:
                pending = self._calls.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if self._closed or time.monotonic() - idle_since > HOST_IDLE_SECONDS:
                    return False
                if job.done():
                    return not self._calls.empty()  # lost while idle
                continue
            if pending is None:
                return False
            if not pending.future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            with self._lock:
                self._running[id(pending.future)] = group
            try:
                reply = self._call(connection, _trimmed(pending, sent), group)
            except HostLost as lost:
                pending.future.set_exception(HostLost(f"{lost}: {_why(job)}"))
                return not self._closed and not self._calls.empty()
            finally:
                with self._lock:
                    self._running.pop(id(pending.future), None)
            pending.future.set_result(reply)
            idle_since = time.monotonic()

    def _call(self, connection: Connection, pending: _Pending, group: str) -> Any:
        try:
            connection.send(pending.call)
        except Exception as exc:
            if isinstance(exc, (OSError, EOFError)):
                raise HostLost("the host went away before the call reached it") from exc
            raise
        limit = None if pending.timeout is None else pending.timeout + TIMEOUT_GRACE
        started = time.monotonic()
        try:
            while True:
                left = None if limit is None else limit - (time.monotonic() - started)
                wait = POLL_SECONDS if left is None else min(POLL_SECONDS, left)
                if wait <= 0:
                    self._cancel_group(group)  # the alarm did not stop it: kill the worker
                    return ("timeout", 0, time.monotonic() - started)
                if connection.poll(wait):
                    break
            return connection.recv()
        except (EOFError, OSError) as exc:
            raise HostLost("the forkjoin worker's Spark task ended while running the call") from exc
        except Exception as exc:  # the reply does not unpickle here
            return ("unreadable", 0, f"{type(exc).__name__}: {exc}")

    def _fail_next(self, error: Exception) -> None:
        try:
            pending = self._calls.get_nowait()
        except queue.Empty:
            return
        if pending is not None and pending.future.set_running_or_notify_cancel():
            pending.future.set_exception(error)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            hosts = list(self._hosts)
            running = list(self._running.values())
        for group in running:
            self._cancel_group(group)
        while True:  # calls never taken: cancelled
            try:
                pending = self._calls.get_nowait()
            except queue.Empty:
                break
            if pending is not None:
                pending.future.cancel()
        for _ in hosts:
            self._calls.put(None)
        for thread in hosts:
            if thread is not threading.current_thread():  # a done-callback that shuts down
                thread.join(timeout=30)


def _shut(connection: Connection) -> None:
    try:
        socket.socket(fileno=os.dup(connection.fileno())).shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _trimmed(pending: _Pending, sent: set[Any]) -> _Pending:
    """The call without the code and shared objects this host already holds."""
    call = pending.call
    trimmed = call._replace(
        function=None if call.function_key in sent else call.function,
        setup=None if call.setup_key in sent else call.setup,
        shared={k: v for k, v in call.shared.items() if k not in sent},
    )
    sent.update((call.function_key, call.setup_key, *call.shared))
    return pending._replace(call=trimmed)


def _why(job: Future[Any]) -> str:
    if not job.done():
        return "its Spark task is still running"
    error = job.exception()
    if error is None:
        return "its Spark task ended"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " | ".join(line for line in lines if not line.startswith("at "))[:800]
