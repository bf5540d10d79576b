"""A rank's side of the gang: the interpreter the launcher starts for each rank.

::

    python -c "...child_main()"  (env: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*, thread caps,
      │                           FORKJOIN_TRAIN_CHILD = the spec file)
      ├─ lifeline thread: the launcher's pipe closes ──> remove the gang dir, exit (no orphans)
      ├─ faulthandler on SIGUSR1 ──> the rank's stacks into its stack file (stall diagnosis)
      ├─ heartbeats: a shared float64 per rank (file mapping), written by the loop's helpers
      └─ init_process_group(gloo | nccl) ──> train_fn ──> ("ok", value) | ("error", report)
         on the result pipe ──> os._exit (no interpreter teardown that could hang)
"""

from __future__ import annotations

import faulthandler
import mmap
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection

import cloudpickle

from . import context

__all__ = ["Heartbeats", "init_process_group", "child_main", "CHILD_MARKER"]

# The process-group timeout inside the ranks: bounds a collective whose peer is gone for good
# (the launcher normally stops the gang long before).
PROCESS_GROUP_TIMEOUT_SECONDS = 300.0
# Set in every rank's environment (to its spec file): tells launch() it runs inside a gang.
CHILD_MARKER = "FORKJOIN_TRAIN_CHILD"


class Heartbeats:
    """One float64 per rank in a small shared file mapping: ranks write their last sign of
    progress (``time.monotonic``, the same clock in every process), the launcher reads it."""

    def __init__(self, path: str, count: int, *, create: bool) -> None:
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, 8 * count)
            self._map = mmap.mmap(fd, 8 * count)
        finally:
            os.close(fd)
        self._view = memoryview(self._map).cast("d")

    def __getitem__(self, rank: int) -> float:
        return float(self._view[rank])

    def __setitem__(self, rank: int, value: float) -> None:
        self._view[rank] = value

    def close(self) -> None:
        self._view.release()
        self._map.close()


def init_process_group(ctx: context.RankContext) -> None:
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    if ctx.device_type == "cuda":
        torch.cuda.set_device(ctx.local_rank)
    dist.init_process_group(
        backend="nccl" if ctx.device_type == "cuda" else "gloo",
        init_method="env://",
        rank=ctx.rank,
        world_size=ctx.world_size,
        timeout=timedelta(seconds=PROCESS_GROUP_TIMEOUT_SECONDS),
        device_id=torch.device("cuda", ctx.local_rank) if ctx.device_type == "cuda" else None,
    )
    # Every rank's connections are complete before any train_fn runs: without this, a rank
    # whose train_fn returns at once can close its end while a peer is still handshaking
    # ("Gloo connectFullMesh failed ... Connection closed by peer").
    dist.barrier()


def _remove_tree(path: str) -> None:

    shutil.rmtree(path, ignore_errors=True)


def _lifeline(fd: int, gang_dir: str) -> None:
    """Blocks until the launcher is gone (its end of the pipe closes), then ends this rank:
    a gang never outlives its launcher (nor does the launcher's temp dir, if it was killed)."""
    try:
        while os.read(fd, 1):
            pass
    except OSError:
        pass
    _remove_tree(gang_dir)
    os._exit(70)


def child_main() -> None:
    """A rank's interpreter starts here (``python -c``): the spec file names everything."""
    with open(os.environ[CHILD_MARKER], "rb") as f:
        spec = cloudpickle.loads(f.read())
    sys.path[:] = spec["sys_path"]
    threading.Thread(
        target=_lifeline,
        args=(spec["lifeline_fd"], os.path.dirname(spec["stack_path"])),
        name="forkjoin-train-lifeline",
        daemon=True,
    ).start()
    stack_file = open(spec["stack_path"], "w")  # noqa: SIM115 - lives as long as the rank
    faulthandler.register(signal.SIGUSR1, file=stack_file, all_threads=True)
    conn = Connection(spec["result_fd"], readable=False)
    rank = spec["rank"]
    heartbeats = Heartbeats(spec["heartbeats"], spec["world_size"], create=False)
    ctx = context.RankContext(
        rank=rank, world_size=spec["world_size"], local_rank=spec["local_rank"],
        device_type=spec["device"], restart=spec["restart"], heartbeats=heartbeats,
    )
    context.set_context(ctx)
    code = 0
    try:
        import torch

        torch.set_num_threads(spec["threads"])
        train_fn, args, kwargs = cloudpickle.loads(spec["payload"])
        del spec
        init_process_group(ctx)
        # no heartbeat here: timeout= applies from the loop's first one (a batch, a forward,
        # a step), so model building and warm-up get the start-up allowance
        value = train_fn(*args, **kwargs)
        try:
            message = cloudpickle.dumps(("ok", value if rank == 0 else None))
        except Exception as exc:
            raise TypeError(f"rank 0's return value could not be pickled: {exc!r}") from exc
        conn.send_bytes(message)
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the launcher
        code = 1
        try:
            exception_bytes: bytes | None = cloudpickle.dumps(exc)
        except Exception:
            exception_bytes = None
        report = {
            "when": time.time(),
            "type": type(exc).__name__,
            "message": str(exc),
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            "exception": exception_bytes,
        }
        try:
            conn.send_bytes(cloudpickle.dumps(("error", report)))
        except OSError:
            pass
    finally:
        try:
            import torch.distributed as dist

            if code == 0 and dist.is_initialized():
                dist.destroy_process_group()
        except Exception:
            pass
    conn.close()
    sys.stdout.flush()
    sys.stderr.flush()
    # skip interpreter teardown: a rank whose peers are gone must not hang in atexit handlers
    os._exit(code)
