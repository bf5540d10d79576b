"""The local Dask cluster forkjoin starts: a scheduler in this process, workers in a child.

::

    caller process                          python -m forkjoin.backends.dask_local FD ...
    ┌──────────────────────────────┐        ┌──────────────────────────────────────────┐
    │ distributed.LocalCluster     │  tcp   │ dask worker CLI: one nanny per worker    │
    │   n_workers=0 (scheduler     │◄──────►│   └─ worker process (spawned from here,  │
    │   only, 127.0.0.1)           │        │      single-threaded, CPU=1)             │
    │ lifeline: write end of a pipe│───────►│ lifeline thread: EOF on FD = the caller  │
    └──────────────────────────────┘  pipe  │   is gone -> exit (workers follow)       │
                                            └──────────────────────────────────────────┘

Why not ``distributed.LocalCluster(processes=True)``: its nannies live in the caller and start
workers with multiprocessing's spawn, which re-runs the user's script (``__main__``) in every
worker, so a script without ``if __name__ == "__main__":`` starts a cluster inside each worker
and fails with "Nanny failed to start" (twelve tracebacks). Here the nannies run in a child
whose ``__main__`` is this module, so spawned workers re-import this module, never the user's
script (functions defined in ``__main__`` travel by value). ``processes=False`` would avoid the
re-import too, but runs every task on threads of the caller, one at a time under the GIL.

The workers get the caller's ``sys.path`` and Dask config, as spawned ones would. They never
outlive the caller: the child holds the read end of a pipe whose write end only the caller
has; when the caller exits or is killed, the read returns EOF and the child exits, and its
workers (distributed's ``AsyncProcess`` watches its parent the same way) with it.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
import weakref
from typing import Any

import dask
import distributed
import psutil

from ..errors import ForkjoinError
from .cluster import with_descendants

# How long the local workers may take to start and join (cold imports on a busy 2-core machine
# take ~5-10 s; a child that exits is noticed within a second, not at this bound).
START_TIMEOUT_S = 90
# How long the worker process may take to close its workers before it is killed.
CLOSE_TIMEOUT_S = 10


class LocalCluster:
    """``workers`` single-threaded worker processes declaring ``CPU=1``, each under a nanny
    that restarts it if it dies, joined to a scheduler in this process on 127.0.0.1."""

    def __init__(self, workers: int, settings: dict[str, Any]) -> None:
        self.workers = workers
        with dask.config.set(settings):
            self.scheduler = distributed.LocalCluster(
                n_workers=0,
                processes=True,  # tcp on 127.0.0.1, not the in-process transport
                host="127.0.0.1",
                # No dashboard; Dask still serves /health and /metrics over HTTP: on a free
                # loopback port (None would mean 8787, ":0" every interface)
                dashboard_address="127.0.0.1:0",
                scheduler_kwargs={"dashboard": False},
                silence_logs=logging.ERROR,
            )
        self.process: subprocess.Popen[bytes] | None = None
        self._lifeline: int | None = None
        self._closed = False
        _live.add(self)
        read_end, self._lifeline = os.pipe()  # both not inheritable by default
        try:
            self.process = subprocess.Popen(
                self.command(read_end),
                env=self._environment(settings),
                stdin=subprocess.DEVNULL,
                pass_fds=(read_end,),
                start_new_session=True,  # Ctrl-C goes to the caller, which stops the workers
            )
        except BaseException:
            self.close()
            raise
        finally:
            os.close(read_end)

    @property
    def address(self) -> str:
        return str(self.scheduler.scheduler_address)

    def command(self, lifeline: int) -> list[str]:
        return [
            sys.executable, "-m", __name__, str(lifeline), self.address,
            "--nworkers", str(self.workers), "--nthreads", "1", "--resources", "CPU=1",
            "--host", "127.0.0.1", "--no-dashboard", "--dashboard-address", "127.0.0.1:0",
            "--name", "forkjoin",
        ]  # fmt: skip

    @staticmethod
    def _environment(settings: dict[str, Any]) -> dict[str, str]:
        with dask.config.set(settings):
            config = dask.config.serialize(dask.config.global_config)
        paths = [os.path.abspath(p or os.curdir) for p in sys.path]
        return {
            **os.environ,
            "DASK_INTERNAL_INHERIT_CONFIG": config,  # the caller's Dask config, as spawn gives
            "DASK_LOGGING__DISTRIBUTED": "error",
            "PYTHONPATH": os.pathsep.join(dict.fromkeys(p for p in paths if os.path.exists(p))),
        }

    def wait_for_workers(self, client: Any) -> None:
        """Until every worker joined; a child that exits first is an error at once."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                client.wait_for_workers(self.workers, timeout=1)
                return
            except TimeoutError:
                code = self.process.poll()
                if code is None and time.monotonic() < deadline:
                    continue
                happened = f"exited with code {code}" if code is not None else "did not join"
                raise ForkjoinError(
                    f"Dask's local workers ({sys.executable} -m {__name__}) {happened} within "
                    f"{START_TIMEOUT_S} s; their error output is above. Start a cluster yourself "
                    f"(`dask scheduler`, `dask worker ADDRESS`) and pass address=, or use "
                    f"backend='process'"
                ) from None

    @property
    def pids(self) -> set[int]:
        return {self.process.pid} if self.process is not None else set()

    def close(self) -> None:
        """The workers first: SIGTERM makes ``dask worker`` close its nannies and workers
        cleanly (the lifeline's abrupt exit would leave Dask's and multiprocessing's warnings
        on stderr); the lifeline and then SIGKILL if that takes too long. Then the scheduler,
        which has no worker left to wait for."""
        if self._closed:
            return
        self._closed = True
        pids = with_descendants(self.pids)
        try:
            if self.process is not None and self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=CLOSE_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=CLOSE_TIMEOUT_S)
            if self._lifeline is not None:
                os.close(self._lifeline)
                self._lifeline = None
            for pid in pids:  # workers exit with their nanny process; make sure of it
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).kill()
        finally:
            self.scheduler.close()


# Clusters not closed yet. At exit (a pool never shut down, fj.map's cached pool) they close
# before distributed's own exit hook (registered earlier, so run later) closes the scheduler:
# the other order leaves workers logging failed heartbeats to a scheduler that is gone.
_live: weakref.WeakSet[LocalCluster] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for cluster in list(_live):
        with contextlib.suppress(Exception):
            cluster.close()


atexit.register(_close_all_at_exit)


def _exit_when_closed(fd: int) -> None:
    """Block on the lifeline; EOF means the caller is gone (exited, crashed, SIGKILLed)."""
    while True:
        try:
            if not os.read(fd, 1):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    os._exit(0)


def _main(argv: list[str]) -> None:
    threading.Thread(
        target=_exit_when_closed, args=(int(argv[0]),), name="forkjoin-lifeline", daemon=True
    ).start()
    from distributed.cli.dask_worker import main

    main(args=argv[1:], prog_name="dask worker")


if __name__ == "__main__":
    _main(sys.argv[1:])
