"""One worker process as the caller sees it: how it is started, signalled and reaped.

A worker is a fresh interpreter (``subprocess``, not fork: safe with threads and CUDA, and it does
not re-run the caller's ``__main__``) in its own session, so that a signal reaches the tasks'
own children too. It inherits three file descriptors: its end of a socket pair (tasks and
results), the read end of the pool's watchdog pipe (parent death), and a memfd holding the id of
the task it is running (read by the caller when the worker dies).
"""

from __future__ import annotations

import functools
import mmap
import os
import signal
import socket
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING

from ..core.resources import Slot
from ..core.task import Task
from . import wire
from .base import DoneCallback
from .process_worker import SLOT
from .protocol import KillReason
from .shm import Segment

if TYPE_CHECKING:
    from .process_zygote import ZygoteClient

# A stopped task's worker gets SIGTERM, then SIGKILL after this grace period.
TERM_GRACE_SECONDS = 1.0

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

_BOOT = (
    "import sys; sys.path.insert(0, {package_parent!r}); "
    "from forkjoin.backends.process_worker_start import main; main({sock}, {watchdog}, {slot})"
)


class WorkerState(Enum):
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"


class WorkerHandle:
    """The caller's view of one worker process."""

    def __init__(
        self,
        worker_id: int,
        pid: int,
        proc: subprocess.Popen[bytes] | None,
        sock: socket.socket,
        pidfd: int,
        slot: mmap.mmap | None,
        zygote: ZygoteClient | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.proc = proc  # None when the zygote forked it (then the zygote reaps it)
        self.zygote = zygote
        self.pid = pid
        self.exitcode: int | None = None
        self.sock = sock
        self.pidfd = pidfd
        self.slot = slot
        self.reader = wire.FrameReader()
        self.writer = wire.FrameWriter()
        self.slot_index = 0  # which of the pool's slots (GPUs, cpus) it fills
        self.spare = False  # started ahead, idle until a worker dies (process_lifecycle.py)
        self.holding: list[Segment] = []  # argument segments sent to it and not yet released
        self.shared_sent: set[int] = set()  # fj.shared ids it has been sent
        self.want_write = False
        self.state = WorkerState.STARTING
        self.started_at = time.monotonic()
        # Tasks sent and not yet answered, in the order the worker runs them (dicts keep order).
        self.in_flight: dict[int, tuple[Task, DoneCallback]] = {}
        self.functions: OrderedDict[int, None] = OrderedDict()  # mirror of the worker's cache
        self.exclusive = False  # running a task with a timeout: nothing queued behind it
        self.task_deadline: float | None = None
        self.kill_reason: KillReason | None = None  # why the caller stops it (protocol.py)
        self.kill_deadline: float | None = None
        self.abandon_deadline: float | None = None  # when to stop tasks nobody waits for
        self.peak_rss = 0
        self.memory_limit: int | None = None  # the pool's memory_limit=, for messages
        self.sock_open = True
        # Work stealing (process.py): tasks are numbered in the order this worker will run them;
        # the slot says the last number it started. Queued tasks taken back from it are
        # remembered until it asks about them ("may run").
        self.next_seq = 0
        self.tasks_left: int | None = None  # before it retires (max_tasks_per_child=)
        self.stolen: set[int] = set()
        self.granted = 0  # tasks up to this number are promised to it (answered MayRun)
        self.seen_seq = 0  # the last started number seen in the slot, and since when
        self.seen_at = time.monotonic()
        # A signal asked for before the zygote said the pid (0 until then): sent once it does.
        self.pending_signal: int | None = None

    @classmethod
    def start(
        cls,
        worker_id: int,
        watchdog_fd: int,
        env: dict[str, str],
        zygote: ZygoteClient | None = None,
        on_spawned: Callable[[WorkerHandle, int], None] | None = None,
    ) -> WorkerHandle:
        """Start a worker running process_worker_start.main, connected by a socket pair: forked by
        the zygote when there is one (milliseconds), else a fresh interpreter. A forked worker's
        pid is 0 until the zygote answers: ``on_spawned(handle, pid)`` is called then."""
        parent_sock, child_sock = socket.socketpair()
        slot_fd = os.memfd_create("forkjoin-slot") if hasattr(os, "memfd_create") else -1
        slot = None
        if slot_fd >= 0:
            os.ftruncate(slot_fd, SLOT.size)
            slot = mmap.mmap(slot_fd, SLOT.size)
        if zygote is not None:
            assert on_spawned is not None
            handle = cls(worker_id, 0, None, parent_sock, -1, slot, zygote)
            try:
                told = functools.partial(on_spawned, handle)
                zygote.request_spawn(env, child_sock.fileno(), slot_fd, told)
            except BaseException:
                parent_sock.close()
                if slot is not None:
                    slot.close()
                raise
            finally:
                child_sock.close()
                if slot_fd >= 0:
                    os.close(slot_fd)
            parent_sock.setblocking(False)
            return handle
        package_parent = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
        code = _BOOT.format(
            package_parent=package_parent,
            sock=child_sock.fileno(),
            watchdog=watchdog_fd,
            slot=slot_fd,
        )
        fds = [child_sock.fileno(), watchdog_fd] + ([slot_fd] if slot_fd >= 0 else [])
        flags = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
        try:
            proc = subprocess.Popen(
                [sys.executable, *flags, "-c", code],
                pass_fds=fds,
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: Ctrl-C stays with the caller
            )
        finally:
            child_sock.close()
            if slot_fd >= 0:
                os.close(slot_fd)
        pidfd = os.pidfd_open(proc.pid) if hasattr(os, "pidfd_open") else -1
        parent_sock.setblocking(False)
        return cls(worker_id, proc.pid, proc, parent_sock, pidfd, slot)

    def current_task_id(self) -> int:
        return SLOT.unpack_from(self.slot, 0)[0] if self.slot is not None else 0

    def started_seq(self) -> int:
        """The queue number of the last task this worker started."""
        return SLOT.unpack_from(self.slot, 0)[1] if self.slot is not None else 0

    def set_pid(self, pid: int) -> None:
        """The zygote (or the worker's Ready) said the pid: watch it, send what was held back.
        ``pidfd`` stays -1 if it has already exited and been reaped (its socket's end then
        tells the manager)."""
        if self.pid:
            return
        self.pid = pid
        try:
            self.pidfd = os.pidfd_open(pid)
        except OSError:
            self.pidfd = -1
        if self.pending_signal is not None:
            signum, self.pending_signal = self.pending_signal, None
            self.signal(signum)

    def signal(self, signum: int) -> None:
        """Signal the worker and its process group (anything its tasks started). Before its
        pid is known, the signal waits for it (SIGKILL wins over SIGTERM)."""
        if self.pid <= 0:  # never killpg(0): that is the caller's own group
            if self.pending_signal != signal.SIGKILL:
                self.pending_signal = signum
            return
        try:
            os.killpg(self.pid, signum)  # the worker leads its own group: its children too
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def reap(self) -> int | None:
        """Collect the exit status and peak memory of a worker that has exited."""
        if self.proc is None:
            return self._reap_from_zygote()
        deadline = time.monotonic() + TERM_GRACE_SECONDS
        while True:
            try:
                pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            except ChildProcessError:
                return self.proc.returncode
            if pid:
                self.peak_rss = max(self.peak_rss, usage.ru_maxrss * 1024)
                code = os.waitstatus_to_exitcode(status)
                self.proc.returncode = code  # so Popen does not wait for it again
                return code
            if time.monotonic() > deadline:  # the socket closed but the process lingers
                self.signal(signal.SIGKILL)
                deadline = time.monotonic() + TERM_GRACE_SECONDS
            time.sleep(0.001)

    def _reap_from_zygote(self) -> int | None:
        """A forked worker's exit, as its parent (the zygote) reports it. Called once its pidfd
        said it exited, or to stop it for good (then it is killed first)."""
        if self.exitcode is not None:
            return self.exitcode
        assert self.zygote is not None
        try:
            if not self.pid:
                self.zygote.settle()  # its pid (or it was never forked: pid stays 0)
            if not self.pid:
                return None
            if self.pidfd >= 0 and not _pidfd_exited(self.pidfd):  # (-1: already reaped)
                self.signal(signal.SIGKILL)
            self.exitcode, peak = self.zygote.wait_exit(self.pid)
        except OSError:  # the zygote is gone: no status to be had (its children die with it)
            self.signal(signal.SIGKILL)
            return None
        self.peak_rss = max(self.peak_rss, peak)
        return self.exitcode

    def resident_memory(self) -> int:
        """Memory the worker itself holds, in bytes (0 if it is gone): resident pages less
        those it shares (the caller's segments it maps are the caller's, not its own)."""
        if self.pid <= 0:
            return 0
        try:
            with open(f"/proc/{self.pid}/statm", "rb") as statm:
                fields = statm.read().split()
                return (int(fields[1]) - int(fields[2])) * _PAGE_SIZE
        except (OSError, IndexError, ValueError):
            return 0

    def close(self) -> None:
        """Release the caller's file descriptors for this (exited) worker."""
        self.reader.close()
        self.writer.clear()
        self.sock.close()
        if self.pidfd >= 0:
            os.close(self.pidfd)
        if self.slot is not None:
            self.slot.close()


def _pidfd_exited(pidfd: int) -> bool:
    import select

    if pidfd < 0:
        return False
    return bool(select.select([pidfd], [], [], 0)[0])


def worker_environment(slot: Slot, depth: int) -> dict[str, str]:
    """The environment of a worker: the caller's, plus its nesting depth, native thread caps
    (its slot's cpus) and its GPU pinning (``CUDA_VISIBLE_DEVICES``, in place before the
    interpreter starts, so CUDA in the worker sees only its own devices)."""
    from ..machine import thread_cap_env

    env = dict(os.environ)
    for name, value in thread_cap_env(slot.threads).items():
        env.setdefault(name, value)  # a cap the user set explicitly wins
    env.update(slot.environment())
    env["FORKJOIN_WORKER_DEPTH"] = str(depth)
    return env
