"""The gang: N rank processes that start together, run ``train_fn``, and stop together.

::

    launch(train_fn, workers=N)
      │  free loopback port, a temp dir for stack dumps, a shared heartbeat array
      ▼
    start rank 0 .. N-1 ──> fresh interpreters (rank_main.py): env RANK/WORLD_SIZE/LOCAL_RANK/
      │                      MASTER_*, thread caps, faulthandler on SIGUSR1, a lifeline pipe,
      │                      init_process_group(gloo | nccl), train_fn(*args) ──>
      │                      ("ok", value) | ("error", traceback) on its result pipe
      ▼
    watch: connection.wait(result pipes + pidfd sentinels, tick) and the heartbeats
      │  first failure (raise, death, stall) ──> settle briefly, pick the root cause,
      │  SIGTERM the gang (and its children), SIGKILL after STOP_GRACE_SECONDS
      ▼
    restarts left? relaunch the whole gang (train_fn resumes from its last checkpoint)
    else raise RankError / RankCrashedError / RankTimeoutError naming the rank

Why not ``fj.Pool``: a gang is not a task pool. Its ranks must all start, all be alive for the
run (a collective blocks until every rank arrives), and all stop when one fails; a pool replaces
a dead worker and retries its task, which for a rank stuck in an all-reduce would only deadlock.
So the gang owns its processes directly, started like the process backend's workers (fresh
interpreters through ``subprocess``, no multiprocessing resource tracker, nothing forked from a
process that may hold CUDA or OpenMP state) and waited on through sentinels, never by polling
alone. failures.py picks the root cause and builds the error.

Under torchrun (``TORCHELASTIC_RUN_ID`` or ``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` already set)
``launch`` does not spawn: it joins the process group from the environment and runs
``train_fn`` in place; torchrun owns restarts there.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import cloudpickle

from . import context
from .errors import TrainingError
from .failures import (
    Failure,
    crash,
    in_collective,
    is_communication_error,
    loads_or_none,
    to_error,
)
from .rank_main import CHILD_MARKER, Heartbeats, init_process_group

__all__ = ["launch"]

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


def _under_external_launcher() -> bool:
    env = os.environ
    if env.get(CHILD_MARKER):
        return False
    if env.get("TORCHELASTIC_RUN_ID"):
        return True
    return all(env.get(k) for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def _resolve_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', not {device!r}")
    if device == "auto":
        from forkjoin.machine import gpus

        return "cuda" if gpus() else "cpu"
    return device


def _default_workers(device: str) -> int:
    from forkjoin.machine import gpus, usable_cpu_count

    if device == "cuda":
        return max(1, len(gpus()))
    return max(1, min(usable_cpu_count(), 4))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(
    train_fn: Callable[..., Any],
    *,
    workers: int | None = None,
    device: str = "auto",
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    max_restarts: int = 0,
    timeout: float | None = None,
    backend: str = "process",
    threads_per_rank: int | None = None,
    env: dict[str, str] | None = None,
    profile: bool | str = False,
) -> Any:
    """Run ``train_fn(*args, **kwargs)`` in a gang of ``workers`` ranks; return rank 0's value.

    ``device``: ``"cpu"`` (gloo, N processes), ``"cuda"`` (nccl, one rank per GPU) or ``"auto"``.
    ``max_restarts``: relaunch the whole gang this many times after a failure; ``train_fn``
    resumes by calling ``load_checkpoint`` (``restart_count()`` says which run this is).
    ``timeout``: seconds a rank may go without a heartbeat (prepared loaders, models and
    optimizers beat on every batch; ``heartbeat()`` does it by hand) before the gang is stopped
    with ``RankTimeoutError`` showing that rank's stack. It applies from a rank's first
    heartbeat; start-up (torch import, process group, building the model) gets
    ``max(timeout, START_TIMEOUT_SECONDS)``. ``backend="ray"`` runs the ranks as Ray actors,
    ``backend="spark"`` as one Spark barrier stage (``spark_launch.py``).
    ``threads_per_rank`` caps torch/BLAS threads per rank (default: usable CPUs / workers).
    ``env``: extra environment variables for the ranks.
    ``profile``: sample every rank's Python stacks (``forkjoin.observe``); True prints the top
    functions across ranks, a path ("train.speedscope.json") writes speedscope JSON.
    Raises ``RankError`` (a rank raised), ``RankCrashedError`` (a rank died) or
    ``RankTimeoutError`` (a rank stalled), each naming the rank.
    """
    kwargs = dict(kwargs or {})
    if max_restarts < 0:
        raise ValueError("max_restarts must be >= 0")
    if timeout is not None and timeout <= 0:
        raise ValueError("timeout must be a positive number of seconds")
    if _under_external_launcher():
        return _run_in_place(train_fn, args, kwargs)
    device = _resolve_device(device)
    if workers is None:
        workers = _default_workers(device)
    if workers < 1:
        raise ValueError("workers must be >= 1")
    if device == "cuda" and backend == "process":
        from forkjoin.errors import ResourceError
        from forkjoin.machine import gpus

        found = len(gpus())
        if workers > found:
            raise ResourceError(
                f"device='cuda' runs one rank per GPU: {workers} ranks asked, {found} GPU(s) "
                f"visible; lower workers= or use device='cpu'"
            )
    if backend == "ray":
        from .ray_launch import launch_ray

        return launch_ray(
            train_fn, workers=workers, device=device, args=tuple(args), kwargs=kwargs,
            max_restarts=max_restarts, env=env or {},
        )
    if backend == "spark":
        from .spark_launch import launch_spark

        return launch_spark(
            train_fn, workers=workers, device=device, args=tuple(args), kwargs=kwargs,
            max_restarts=max_restarts, env=env or {},
        )
    if backend != "process":
        raise ValueError(f"backend must be 'process', 'ray' or 'spark', not {backend!r}")
    if threads_per_rank is None:
        from forkjoin.machine import usable_cpu_count

        threads_per_rank = max(1, usable_cpu_count() // workers)
    session = None
    if profile:  # observe: each rank samples its own stacks; merged here at the end
        from forkjoin.observe.runs import start_profile

        train_fn, session = start_profile(train_fn)
    payload = cloudpickle.dumps((train_fn, tuple(args), kwargs))
    unfollow = None
    if "forkjoin.observe.dashboard" in sys.modules:  # observe: a live dashboard is up
        from forkjoin.observe.runs import follow_training

        env, unfollow = follow_training(env, workers)
    try:
        return _run_gang(payload, workers, device, timeout, threads_per_rank, env, max_restarts)
    finally:
        if unfollow is not None:
            unfollow()
        if session is not None:
            from forkjoin.observe.runs import deliver_profile

            deliver_profile(session.stop(), profile, None)


def _run_gang(
    payload: bytes,
    workers: int,
    device: str,
    timeout: float | None,
    threads_per_rank: int,
    env: dict[str, str] | None,
    max_restarts: int,
) -> Any:
    """Launch the gang, relaunching it after a failure up to ``max_restarts`` times."""
    restart = 0
    while True:
        gang = _Gang(
            payload, workers=workers, device=device, restart=restart, timeout=timeout,
            threads=threads_per_rank, env=env or {},
        )
        try:
            return gang.run()
        except TrainingError as error:
            error.restarts = restart
            if restart >= max_restarts:
                if max_restarts:
                    error.args = (f"{error.args[0]} (after {restart} restart(s))", *error.args[1:])
                raise
            restart += 1
            print(
                f"forkjoin.train: {error.args[0].splitlines()[0]}; relaunching the gang "
                f"(restart {restart} of {max_restarts})",
                file=sys.stderr,
                flush=True,
            )


def _run_in_place(train_fn: Callable[..., Any], args: Sequence[Any], kw: dict[str, Any]) -> Any:
    """Started by torchrun (or a similar launcher): join its process group and run here."""
    import torch.distributed as dist

    ctx = context.current()
    created = False
    if not dist.is_initialized():
        init_process_group(ctx)
        created = True
    try:
        return train_fn(*args, **kw)
    finally:
        if created:
            dist.destroy_process_group()


# -- the gang (launcher side) ---------------------------------------------------------------------


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


class _Gang:
    def __init__(
        self, payload: bytes, *, workers: int, device: str, restart: int,
        timeout: float | None, threads: int, env: dict[str, str],
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
            "rank": r, "world_size": self.workers, "local_rank": r, "device": self.device,
            "restart": self.restart, "threads": self.threads, "sys_path": list(sys.path),
            "result_fd": result_w, "lifeline_fd": lifeline_r, "stack_path": stack_path,
            "heartbeats": os.path.join(tmpdir, "heartbeats"), "payload": self.payload,
        }
        with open(spec_path, "wb") as f:
            f.write(cloudpickle.dumps(spec))
        env = {
            **os.environ, **self.env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "RANK": str(r), "WORLD_SIZE": str(self.workers), "LOCAL_RANK": str(r),
            "LOCAL_WORLD_SIZE": str(self.workers), "GROUP_RANK": "0",
            "FORKJOIN_TRAIN_RESTART": str(self.restart), "FORKJOIN_TRAIN_DEVICE": self.device,
            CHILD_MARKER: spec_path,
        }
        from forkjoin.machine import thread_cap_env

        env.update(thread_cap_env(self.threads))  # before the rank loads torch / BLAS
        flags = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
        try:
            proc = subprocess.Popen(
                [sys.executable, *flags, "-c", _CHILD_COMMAND],
                env=env, stdin=subprocess.DEVNULL, pass_fds=(result_w, lifeline_r),
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
            "error", e.rank, data["when"], data["message"], data["type"], data["traceback"],
            loads_or_none(data["exception"]),
            communication=is_communication_error(data["type"], data["message"]),
        )

    def _stalled(self, heartbeats: Any) -> Failure | None:
        assert self.timeout is not None
        now = time.monotonic()
        alive = [e for e in self.ranks if not e.done]
        start_limit = max(self.timeout, START_TIMEOUT_SECONDS)
        late = [
            e for e in alive
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
            "stall", culprit.rank, time.time(),
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

    # -- errors --

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


