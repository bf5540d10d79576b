"""A worker process's start: signals, the caller watchdog, the Init message, the initializer.

::

    main(socket fd, watchdog fd, slot fd)        (forked by the zygote, or a fresh interpreter)
      SIGINT ignored (Ctrl-C is the caller's); SIGTERM unwinds like an exception
      flusher thread: sends late results, and watches the pipe whose write end only the
        caller holds; when the caller dies, even by SIGKILL, it kills the worker's process
        group (process_wakeup.py)
      Init -> sys.path, FORKJOIN_WORKER_*, authkey, worker context, the initializer
        -> Ready (or InitError and exit 3)
      Worker.serve() until Stop or the caller's socket closes

The messages are ``protocol.py``'s; ``process_worker.py`` serves tasks once this is done.
"""

from __future__ import annotations

import mmap
import os
import pickle
import signal
import socket
import sys
import threading
from typing import Any

from ..core.shared import Shared
from .process_worker import SLOT, Worker, unpack_prepared
from .protocol import Init, Msg, view


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
    sock = socket.socket(fileno=sock_fd)
    sock.setblocking(True)
    slot = mmap.mmap(slot_fd, SLOT.size) if slot_fd >= 0 else None
    worker = Worker(sock, slot, watchdog_fd)
    # From here on, the caller's death ends this process (the flusher watches for it), even
    # during a long initializer.
    threading.Thread(target=worker.flush_late, name="forkjoin-flusher", daemon=True).start()
    Shared.resolver = worker.resolve_shared
    from .wire import close_fds, recv_frame

    frame, fds = recv_frame(sock)
    init = view(Init, pickle.loads(frame))
    worker.receive_shared(init.shared, fds)
    init_payload = None
    if init.initializer is not None:
        init_payload = worker.map_segments(init.initializer, fds, report=False)
    close_fds(fds)
    sys.path[:] = init.sys_path
    os.environ["FORKJOIN_WORKER_DEPTH"] = str(init.depth)
    os.environ["FORKJOIN_WORKER_ID"] = str(init.worker_id)
    from multiprocessing import process as mp_process  # the zygote imported it

    mp_process.current_process().authkey = init.authkey
    from ..core.context import WorkerContext, install

    context = WorkerContext(init.worker_id, "process", device=init.device, gpus=tuple(init.gpus))
    install(context)
    if init_payload is not None:
        try:
            initializer, initargs = unpack_prepared(init_payload)
            initializer(*initargs)
        except BaseException as exc:
            from .wire import short_traceback

            summary = f"{type(exc).__name__}: {exc}"
            worker.send((Msg.INIT_ERROR.value, summary, short_traceback(exc)))  # an InitError
            sys.exit(3)
    worker.send((Msg.READY.value, os.getpid()))  # a protocol.Ready
    worker.serve()
