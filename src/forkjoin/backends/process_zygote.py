"""A zygote: one pre-started interpreter that forks new workers in a few milliseconds.

::

    caller (manager thread)                 zygote (single thread)            new worker
    ───────────────────────                 ──────────────────────            ──────────
    Spawn(cwd, env id[, env]) + fds ─>      fork()  ──────────────────────>   setsid, cwd, env
      [worker socket, slot memfd]                                          process_worker_start.main
      (no wait: Init goes out at once)
                              <──────────   Spawned(pid)   (read when the socket is readable)
    pidfd_open(pid): its death is seen at once
                              <──────────   Exited(pid, exit code, peak RSS)   (on SIGCHLD)

Why: a fresh interpreter costs ~50 ms of CPU to start and import (~0.4 s on a loaded machine),
and a job whose items kill their worker (a segfaulting C extension, the OOM killer) pays that
for every death: 142 deaths made a 4 s stress run take 50 s. A fork of a process that has
already imported the worker's modules costs a few ms. Everything a worker takes from its
environment is set after the fork, before the worker's code runs (the zygote imports nothing
that reads it: no numpy, no CUDA): the working directory, the environment (thread caps,
``CUDA_VISIBLE_DEVICES``), its own session (process group). ``random`` reseeds itself in a
forked child; the caller's ``sys.path`` arrives with the worker's "init" message as before.

The messages are ``protocol.py``'s (``ZygoteMsg``). The zygote is the workers' parent, so it
reaps them and reports each exit; the caller sees the death through a pidfd, as for a worker it
started itself. It dies with the caller: it blocks on the same watchdog pipe as the workers.
Where a zygote cannot start (no ``os.fork``, no ``pidfd_open``), the backend starts each worker
with ``subprocess`` as before.

The zygote also learns: before it forks a replacement for a dead worker, the caller sends
Import(modules), the modules of the functions the pool has run (``function_modules``), and
the zygote imports them, so a replacement does not pay for importing the user's code and what
it imports (pandas: ~0.3 s) at every death. This is ``multiprocessing``'s forkserver preload,
done for the modules that are known to be needed. A pool's ``preload=`` modules (pyarrow and
pandas for a data job) are imported the same way before the first worker is forked: the
workers start with them, share their pages, and the import is paid once, not once per worker.
The zygote runs with the workers' native thread caps, so a numerical library imported here is
capped as in a worker.
"""

from __future__ import annotations

import atexit
import os
import pickle
import select
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .protocol import Exited, Import, Spawn, Spawned, ZygoteMsg, view

# How long the caller waits for the zygote to answer a spawn or report an exit before giving up
# on it (and starting workers the slow way).
REPLY_TIMEOUT_SECONDS = 5.0
# ... and while it imports modules: torch and what comes with it take ~10 s on a loaded machine.
IMPORT_TIMEOUT_SECONDS = 120.0

_LENGTH = struct.Struct("<I")
_MAX_FDS = 4


def _send(sock: socket.socket, message: Any, fds: list[int] | None = None) -> None:
    data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    frame = _LENGTH.pack(len(data)) + data
    if fds:
        socket.send_fds(sock, [frame], fds)
    else:
        sock.sendall(frame)


def _recv(sock: socket.socket) -> tuple[Any, list[int]]:
    """One message and the fds that came with it (blocking)."""
    header, fds, _, _ = socket.recv_fds(sock, _LENGTH.size, _MAX_FDS)
    if not header:
        raise EOFError
    while len(header) < _LENGTH.size:
        more = sock.recv(_LENGTH.size - len(header))
        if not more:
            raise EOFError
        header += more
    (length,) = _LENGTH.unpack(header)
    data = b""
    while len(data) < length:
        chunk = sock.recv(length - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return pickle.loads(data), list(fds)


# -- the zygote process ----------------------------------------------------------------------------


def serve(control_fd: int, watchdog_fd: int) -> None:
    """Entry point of the zygote (see ZygoteClient.start)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    # What every worker imports at start-up, imported once here. multiprocessing: a worker sets
    # its authkey (``process_worker_start``), and importing the package in each new worker was
    # ~8 ms of CPU and a third of its copy-on-write page faults, per death.
    import multiprocessing.process  # noqa: F401

    from ..core import context, execute  # noqa: F401
    from . import process_worker_start  # noqa: F401  (and process_worker)

    _freeze_heap()

    control = socket.socket(fileno=control_fd)
    control.setblocking(True)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the poll below through wake_w
    poller = select.poll()
    poller.register(control, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    poller.register(watchdog_fd, select.POLLIN)
    environments = _Environments()
    while True:
        for fd, _ in poller.poll():
            if fd == watchdog_fd:
                os._exit(0)  # the caller is gone: so are we (workers follow by their own watch)
            if fd == wake_r:
                os.read(wake_r, 4096)
                _report_exits(control)
            elif fd == control.fileno():
                try:
                    message, fds = _recv(control)
                except (EOFError, OSError):
                    os._exit(0)
                match message[0]:
                    case ZygoteMsg.IMPORT:
                        request = view(Import, message)
                        _import_quietly(request.modules, request.sys_path)
                        environments.changes.clear()  # an import may have set a variable
                        _send(control, (ZygoteMsg.IMPORTED.value,))
                    case ZygoteMsg.SPAWN:
                        spawn = view(Spawn, message)
                        changes = environments.changes_for(spawn.env_id, spawn.env)
                        pid = _fork_worker(
                            spawn.cwd, changes, fds, control, watchdog_fd, (wake_r, wake_w)
                        )
                        _send(control, (ZygoteMsg.SPAWNED.value, pid))
                        for fd_ in fds:
                            os.close(fd_)


def _freeze_heap() -> None:
    """Keep the garbage collector of every forked worker off the objects it inherits: a
    collection that walks them writes to their pages, and each page written is copied (~10 ms
    of CPU per worker for a zygote that imported pandas). Objects made later are collected as
    usual."""
    import gc

    gc.collect()
    gc.freeze()


def _import_quietly(modules: list[str], path: list[str]) -> None:
    """Import what workers will import, from the caller's ``sys.path`` (as a worker does); a
    module that fails here fails in the worker, which reports it as usual."""
    import importlib

    sys.path[:] = path  # a forked worker sets its own from its "init" message
    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException:  # noqa: S110  (SystemExit too: the zygote must keep serving)
            pass
    _freeze_heap()


def function_modules(fn: Any) -> list[str]:
    """The modules a worker imports to unpickle ``fn``: its own, a ``functools.partial``'s
    function's, a callable object's class's (``__main__`` excluded: a worker does not run the
    caller's script)."""
    import functools

    modules = []
    while isinstance(fn, functools.partial):
        fn = fn.func
    for owner in (fn, type(fn)):
        name = getattr(owner, "__module__", None)
        if name == "__main__":
            modules.append("cloudpickle")  # it travels by value (buffers.pickle_with_buffers)
        elif isinstance(name, str) and name != "builtins" and name in sys.modules:
            modules.append(name)
    return modules


def pickled_modules(stream: bytes) -> list[str]:
    """The modules that unpickling ``stream`` imports: those its GLOBAL and STACK_GLOBAL opcodes
    name. A function that travels by value (cloudpickle), or sits inside a wrapper object whose
    class names another module, needs modules that ``function_modules`` cannot see from the
    outside: a ``__main__`` function in a wrapper made each new worker import cloudpickle
    (~8 ms of CPU per death). Only strings are followed through the memo; a module missed here
    is imported by the worker as before."""
    import pickletools

    modules: dict[str, None] = {}
    strings: list[str | None] = []  # the values pushed, as far as strings go
    memo: list[str | None] = []
    try:
        for opcode, arg, _ in pickletools.genops(stream):
            name = opcode.name
            if name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                strings.append(arg)
            elif name == "MEMOIZE":
                memo.append(strings[-1] if strings else None)
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                index = int(arg) if arg is not None else -1
                strings.append(memo[index] if 0 <= index < len(memo) else None)
            elif name == "GLOBAL":
                modules.setdefault(str(arg).split(" ", 1)[0], None)
            elif name == "STACK_GLOBAL" and len(strings) >= 2:
                module = strings[-2]
                if module:
                    modules.setdefault(module, None)
                strings.append(None)
            else:
                strings.append(None)
            del strings[:-2]
    except Exception:  # noqa: S110  (a stream pickletools cannot walk: keep what was found)
        pass
    return [m for m in modules if m not in ("__main__", "builtins", "copyreg")]


def _report_exits(control: socket.socket) -> None:
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            return
        exitcode = os.waitstatus_to_exitcode(status)
        _send(control, (ZygoteMsg.EXITED.value, pid, exitcode, usage.ru_maxrss * 1024))


class _Environments:
    """The workers' environments, by the caller's id for each (sent once), and what a forked
    worker must change in the zygote's own to get one: computed once per id (again after an
    import), so a new worker sets a few variables instead of comparing them all."""

    def __init__(self) -> None:
        self.sent: dict[int, dict[str, str]] = {}
        self.changes: dict[int, tuple[list[str], dict[str, str]]] = {}

    def changes_for(
        self, env_id: int, env: dict[str, str] | None
    ) -> tuple[list[str], dict[str, str]]:
        if env is not None:
            self.sent[env_id] = env
            self.changes.pop(env_id, None)
        known = self.changes.get(env_id)
        if known is None:
            env = self.sent[env_id]
            environ = os.environ
            removed = [name for name in environ if name not in env]
            changed = {name: value for name, value in env.items() if environ.get(name) != value}
            known = self.changes[env_id] = (removed, changed)
        return known


def _fork_worker(
    cwd: str,
    env_changes: tuple[list[str], dict[str, str]],
    fds: list[int],
    control: socket.socket,
    watchdog_fd: int,
    wake: tuple[int, int],
) -> int:
    sock_fd, slot_fd = fds[0], (fds[1] if len(fds) > 1 else -1)
    pid = os.fork()
    if pid:
        return pid
    # The new worker: nothing of the zygote's own plumbing survives into it.
    code = 0
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        control.close()
        for fd in wake:
            os.close(fd)
        os.setsid()  # its own process group: the caller signals the group
        os.chdir(cwd)
        removed, changed = env_changes
        for name in removed:
            del os.environ[name]
        os.environ.update(changed)
        atexit._clear()  # the zygote's exit hooks are not the worker's
        from .process_worker_start import main

        main(sock_fd, watchdog_fd, slot_fd)
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    os._exit(_finish_like_an_interpreter(code))


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def _finish_like_an_interpreter(code: int) -> int:
    """What a fresh interpreter does on its way out, which a forked child must do by hand:
    wait for non-daemon threads, run atexit hooks (``run_on_devices``' teardown, the worker's
    "die by SIGTERM" hook), flush stdio. Returns the exit code."""
    import threading

    try:
        threading._shutdown()  # type: ignore[attr-defined]
    except BaseException:
        pass
    try:
        atexit._run_exitfuncs()
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    return code


# -- the caller's side ---------------------------------------------------------------------------


class ZygoteClient:
    """The caller's handle on its zygote. Used only from the backend's manager thread."""

    def __init__(self, proc: Any, control: socket.socket) -> None:
        self.proc = proc
        self.control = control
        self.exits: dict[int, tuple[int, int]] = {}  # pid -> (exit code, peak RSS)
        # Spawns asked for and not yet answered, oldest first: each is told its worker's pid.
        self.waiting: deque[Callable[[int], None]] = deque()
        # Environments sent, by id (a worker's is sent once: see _Environments).
        self._envs: list[dict[str, str]] = []
        self._env_ids: dict[int, int] = {}  # id(env dict) -> its id here
        self._imports_pending = 0  # Import messages not yet answered: replies may take longer

    @classmethod
    def start(cls, watchdog_fd: int, env: dict[str, str]) -> ZygoteClient | None:
        """Start a zygote, or None where this platform cannot have one."""
        import subprocess

        if not (hasattr(os, "fork") and hasattr(os, "pidfd_open") and hasattr(socket, "send_fds")):
            return None
        parent, child = socket.socketpair()
        package_parent = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
        code = (
            f"import sys; sys.path.insert(0, {package_parent!r}); "
            f"from forkjoin.backends.process_zygote import serve; "
            f"serve({child.fileno()}, {watchdog_fd})"
        )
        flags = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
        try:
            proc = subprocess.Popen(
                [sys.executable, *flags, "-c", code],
                pass_fds=[child.fileno(), watchdog_fd],
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError:
            parent.close()
            return None
        finally:
            child.close()
        parent.settimeout(REPLY_TIMEOUT_SECONDS)
        return cls(proc, parent)

    def request_spawn(
        self, env: dict[str, str], sock_fd: int, slot_fd: int, on_spawned: Callable[[int], None]
    ) -> None:
        """Ask for a worker to be forked, without waiting: ``on_spawned(pid)`` is called when
        the answer is read (``receive_waiting``, ``settle``, ``wait_exit``). Waiting here cost the
        manager ~1-2 ms per start (the zygote's fork and a round trip), during which no result
        was read and no task sent: with a worker dying every few ms, a quarter of its time.
        Raises OSError if the zygote is gone."""
        fds = [sock_fd] + ([slot_fd] if slot_fd >= 0 else [])
        env_id = self._env_ids.get(id(env))
        first = env_id is None or self._envs[env_id] is not env
        if first:
            env_id = len(self._envs)
            self._envs.append(env)  # kept: its id() stays this dict's
            self._env_ids[id(env)] = env_id
        message = (ZygoteMsg.SPAWN.value, os.getcwd(), env_id, env if first else None)
        _send(self.control, message, fds)  # a protocol.Spawn
        self.waiting.append(on_spawned)

    def receive_waiting(self) -> None:
        """Read the messages waiting now, if any (the manager's selector saw the socket
        readable, but a ``wait_exit`` in the same round may have read them already). OSError
        if the zygote is gone."""
        while select.select([self.control], [], [], 0)[0]:
            self._receive()

    def settle(self) -> None:
        """Wait for the answer to every spawn asked for (each bounded by REPLY_TIMEOUT_SECONDS;
        OSError if the zygote stops answering)."""
        while self.waiting:
            self._receive()

    def preload(self, modules: list[str]) -> None:
        """Have the zygote import ``modules`` before it forks again (without waiting: its
        answer, IMPORTED, is read with the next replies, which may come up to
        IMPORT_TIMEOUT_SECONDS late meanwhile)."""
        _send(self.control, (ZygoteMsg.IMPORT.value, modules, list(sys.path)))
        self._imports_pending += 1
        self.control.settimeout(IMPORT_TIMEOUT_SECONDS)

    def wait_exit(self, pid: int) -> tuple[int, int]:
        """The exit code and peak RSS of a worker that has exited (its pidfd said so)."""
        deadline = time.monotonic() + (self.control.gettimeout() or REPLY_TIMEOUT_SECONDS)
        while pid not in self.exits:
            if time.monotonic() > deadline:
                raise OSError(f"the zygote did not report the exit of worker {pid}")
            self._receive()
        return self.exits.pop(pid)

    def _receive(self) -> tuple[Any, ...]:
        try:
            message, fds = _recv(self.control)
        except (TimeoutError, EOFError) as exc:
            raise OSError(f"the worker zygote stopped answering ({exc!r})") from exc
        for fd in fds:
            os.close(fd)
        if message[0] == ZygoteMsg.EXITED:
            exited = view(Exited, message)
            self.exits[exited.pid] = (exited.exitcode, exited.peak_rss)
        elif message[0] == ZygoteMsg.SPAWNED and self.waiting:
            self.waiting.popleft()(int(view(Spawned, message).pid))
        elif message[0] == ZygoteMsg.IMPORTED:
            self._imports_pending -= 1
            if not self._imports_pending:
                self.control.settimeout(REPLY_TIMEOUT_SECONDS)
        return message

    def close(self) -> None:
        try:
            self.control.close()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
