"""One run of a gang: start its rank processes, watch them, stop them together.

::

    Gang.run ─── _start(rank) x N ──> fresh interpreters (rank_main.py), a spec file each, a result
      │                               pipe, the shared lifeline pipe and heartbeat array
      ▼
    _watch: wait(result pipes + pidfd sentinels, tick)
      │  a rank's ("ok", value) or ("error", ...) message, a death (crash), a stall (_stalled:
      │  heartbeats late; stacks dumped through SIGUSR1 to find the rank the others wait for)
      │  first failure -> keep collecting for SETTLE_SECONDS -> the root cause (failures.py)
      ▼
    _stop: SIGTERM every rank (and the children it started), SIGKILL after STOP_GRACE_SECONDS

gang.py decides whether to run at all, where (process, Ray, Spark, torchrun in place) and how
often to relaunch; this module is one attempt.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import cloudpickle

from .failures import Failure, crash, in_collective, is_communication_error, loads_or_none, to_error
from .rank_main import CHILD_MARKER, Heartbeats

# How long a stopped gang gets between SIGTERM and SIGKILL. Ranks are usually blocked in a C++
# collective, where the default SIGTERM action ends them at once; a user handler gets this long.
STOP_GRACE_SECONDS = 3.0
# After the first failure, how long to keep collecting the others before choosing the root
# cause: a killed rank makes its peers fail in gloo within milliseconds, and the user should
# hear about the kill, not about "Connection closed by peer".
SETTLE_SECONDS = 0.5
# The watch loop's tick when a timeout is set: heartbeats are checked this often.
HEARTBEAT_TICK_SECONDS = 0.25
# A rank's start (interpreter, torch import, process group, building the model and optimizer)
# is allowed this long, or timeout= if that is longer, before its first heartbeat: importing
# torch alone takes seconds on a loaded machine, and timeout= is about the training loop.
START_TIMEOUT_SECONDS = 120.0
# How long a stalled rank gets to write its faulthandler stack after SIGUSR1.
STACK_DUMP_SECONDS = 2.0

_CHILD_COMMAND = "from forkjoin.train.rank_main import child_main; child_main()"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class _Rank:
    rank: int
    process: Any
    conn: Connection
    stack_path: str
    sentinel: int = -1
    done: bool = False
    reported: bool = False
    eof: bool = False
    children: list[int] = field(default_factory=list)


class Gang:
    """One attempt: ``run()`` returns rank 0's value or raises the root cause's error."""

    def __init__(
        self,
        payload: bytes,
        *,
        workers: int,
        device: str,
        restart: int,
        timeout: float | None,
        threads: int,
        env: dict[str, str],
    ) -> None:
        self.payload = payload
        self.workers = workers
        self.device = device
        self.restart = restart
        self.timeout = timeout
        self.threads = threads
        self.env = env
        self.ranks: list[_Rank] = []
        self.result: Any = None
        self.started = time.monotonic()

    def run(self) -> Any:
        tmpdir = tempfile.mkdtemp(prefix="forkjoin-train-")
        heartbeats = Heartbeats(os.path.join(tmpdir, "heartbeats"), self.workers, create=True)
        lifeline_r, lifeline_w = os.pipe()
        try:
            port = _free_port()
            self.started = time.monotonic()
            for r in range(self.workers):
                heartbeats[r] = 0.0  # "starting": the start-up allowance applies
            for r in range(self.workers):
                self.ranks.append(self._start(r, port, tmpdir, lifeline_r))
            os.close(lifeline_r)
            lifeline_r = -1
            failure = self._watch(heartbeats)
            if failure is None:
                return self.result
            raise to_error(failure, self.workers, self.timeout)
        finally:
            self._stop()
            if lifeline_r >= 0:
                os.close(lifeline_r)
            os.close(lifeline_w)  # any rank still alive ends itself now
            for entry in self.ranks:
                if entry.sentinel >= 0 and entry.sentinel != entry.conn.fileno():
                    os.close(entry.sentinel)
                entry.conn.close()
            heartbeats.close()
            _remove_tree(tmpdir)

    def _start(self, r: int, port: int, tmpdir: str, lifeline_r: int) -> _Rank:
        result_r, result_w = os.pipe()
        stack_path = os.path.join(tmpdir, f"rank{r}.stack")
        spec_path = os.path.join(tmpdir, f"rank{r}.spec")
        spec = {
            "rank": r,
            "world_size": self.workers,
            "local_rank": r,
            "device": self.device,
            "restart": self.restart,
            "threads": self.threads,
            "sys_path": list(sys.path),
            "result_fd": result_w,
            "lifeline_fd": lifeline_r,
            "stack_path": stack_path,
            "heartbeats": os.path.join(tmpdir, "heartbeats"),
            "payload": self.payload,
        }
        with open(spec_path, "wb") as f:
            f.write(cloudpickle.dumps(spec))
        env = {
            **os.environ,
            **self.env,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(r),
            "WORLD_SIZE": str(self.workers),
            "LOCAL_RANK": str(r),
            "LOCAL_WORLD_SIZE": str(self.workers),
            "GROUP_RANK": "0",
            "FORKJOIN_TRAIN_RESTART": str(self.restart),
            "FORKJOIN_TRAIN_DEVICE": self.device,
            CHILD_MARKER: spec_path,
        }
        from forkjoin.machine import thread_cap_env

        env.update(thread_cap_env(self.threads))  # before the rank loads torch / BLAS
        flags = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
        try:
            proc = subprocess.Popen(
                [sys.executable, *flags, "-c", _CHILD_COMMAND],
                env=env,
                stdin=subprocess.DEVNULL,
                pass_fds=(result_w, lifeline_r),
            )
        finally:
            os.close(result_w)
        try:
            sentinel = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):  # no pidfd: the result pipe's EOF marks the exit
            sentinel = -1
        conn = Connection(result_r, writable=False)
        return _Rank(r, proc, conn, stack_path, sentinel=sentinel if sentinel >= 0 else result_r)

    # -- watching --

    def _watch(self, heartbeats: Any) -> Failure | None:
        failures: list[Failure] = []
        settle_until: float | None = None
        while True:
            running = [e for e in self.ranks if not e.done]
            if not running and not failures:
                return None
            now = time.monotonic()
            if settle_until is not None and (now >= settle_until or not running):
                return min(failures, key=Failure.priority)
            waits: list[Any] = []
            for e in running:
                waits.append(e.sentinel)
                if not e.reported and not e.eof:
                    waits.append(e.conn)
            tick = None
            if settle_until is not None:
                tick = max(0.0, settle_until - now)
            elif self.timeout is not None:
                tick = HEARTBEAT_TICK_SECONDS
            ready = wait(waits, timeout=tick)
            for e in running:
                exited = e.sentinel in ready and e.process.poll() is not None
                if e.conn in ready or exited:
                    failure = self._read(e)
                    if failure is not None:
                        failures.append(failure)
                if exited:
                    e.done = True
                    if not e.reported:  # died without a word: killed, or os._exit
                        failures.append(crash(e.rank, e.process.returncode))
                        e.reported = True
            if failures and settle_until is None:
                if self.timeout is None or not any(f.kind == "stall" for f in failures):
                    self._collect_children()
                settle_until = time.monotonic() + SETTLE_SECONDS
                continue
            if self.timeout is not None and not failures:
                stalled = self._stalled(heartbeats)
                if stalled is not None:
                    return stalled

    def _read(self, e: _Rank) -> Failure | None:
        try:
            if not e.conn.poll(0):
                return None
            kind, data = cloudpickle.loads(e.conn.recv_bytes())
        except (EOFError, OSError):
            e.eof = True
            return None
        except Exception as exc:  # a rank's message that cannot be read
            e.reported = True
            return Failure("error", e.rank, time.time(), f"unreadable message: {exc!r}")
        e.reported = True
        if kind == "ok":
            if e.rank == 0:
                self.result = data
            return None
        return Failure(
            "error",
            e.rank,
            data["when"],
            data["message"],
            data["type"],
            data["traceback"],
            loads_or_none(data["exception"]),
            communication=is_communication_error(data["type"], data["message"]),
        )

    def _stalled(self, heartbeats: Any) -> Failure | None:
        assert self.timeout is not None
        now = time.monotonic()
        alive = [e for e in self.ranks if not e.done]
        start_limit = max(self.timeout, START_TIMEOUT_SECONDS)
        late = [
            e
            for e in alive
            if (heartbeats[e.rank] and now - heartbeats[e.rank] > self.timeout)
            or (not heartbeats[e.rank] and now - self.started > start_limit)
        ]
        if not late:
            return None
        # The rank that hangs is usually not the one that stopped beating first: its peers
        # then wait for it inside a collective. So look at the stacks: a late rank that is not
        # inside torch.distributed is the culprit; else the one silent the longest.
        stacks = self._dump_stacks(alive)
        waiting = [e for e in late if in_collective(stacks.get(e.rank, ""))]
        candidates = [e for e in late if e not in waiting] or late
        culprit = min(candidates, key=lambda e: heartbeats[e.rank])
        silent = now - (heartbeats[culprit.rank] or self.started)
        note = ""
        others = [e.rank for e in waiting if e is not culprit]
        if others:
            note = f"; rank(s) {others} were waiting for it in a collective"
        return Failure(
            "stall",
            culprit.rank,
            time.time(),
            message=f"no heartbeat for {silent:.1f} s (timeout={self.timeout:g} s){note}",
            traceback_text=stacks.get(culprit.rank, ""),
        )

    def _dump_stacks(self, alive: list[_Rank]) -> dict[int, str]:
        for e in alive:
            _signal(e.process.pid, signal.SIGUSR1)
        deadline = time.monotonic() + STACK_DUMP_SECONDS
        stacks: dict[int, str] = {}
        sizes: dict[int, int] = {}
        while time.monotonic() < deadline:  # a dump is a few lines written in microseconds
            for e in alive:
                try:
                    size = os.path.getsize(e.stack_path)
                except OSError:
                    size = 0
                if size and sizes.get(e.rank) == size:
                    with open(e.stack_path, errors="replace") as f:
                        stacks[e.rank] = f.read()
                sizes[e.rank] = size
            if len(stacks) == len(alive):
                break
            time.sleep(0.05)
        return stacks

    # -- stopping --

    def _collect_children(self) -> None:
        """Note each live rank's own children (DataLoader workers) so they go down with it."""
        try:
            import psutil
        except ImportError:  # pragma: no cover - psutil is a core dependency
            return
        for e in self.ranks:
            try:
                kids = psutil.Process(e.process.pid).children(recursive=True)
                e.children = sorted({*e.children, *(k.pid for k in kids)})
            except Exception:
                pass

    def _stop(self) -> None:
        alive = [e for e in self.ranks if e.process.poll() is None]
        if alive:
            self._collect_children()
        for e in alive:
            _signal(e.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for e in alive:
            try:
                e.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for e in self.ranks:
            if e.process.poll() is None:
                _signal(e.process.pid, signal.SIGKILL)
                try:
                    e.process.wait(STOP_GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    pass
            for pid in e.children:
                _signal(pid, signal.SIGKILL)


def _signal(pid: int | None, sig: int) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _remove_tree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
