"""Stage classes and functions for tests/test_data_stages.py (importable by worker processes).

Each one leaves evidence in files under a directory it is given, since it runs in other
processes: one file per construction, per close(), per block started or finished.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pyarrow as pa

import forkjoin as fj


def _touch(directory: str, kind: str) -> None:
    Path(directory, f"{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}").touch()


def count(directory: str | Path, kind: str) -> int:
    return sum(1 for p in Path(directory).iterdir() if p.name.startswith(f"{kind}-"))


class CountingModel:
    """A "model" whose construction and close are counted; adds ``offset`` to x."""

    def __init__(self, directory: str, offset: int = 1, delay: float = 0.0) -> None:
        self.directory = directory
        self.offset = offset
        self.delay = delay
        _touch(directory, "built")

    def __call__(self, batch: pa.Table) -> dict:
        if self.delay:
            time.sleep(self.delay)
        x = batch.column("x").to_pylist()
        return {"x": x, "y": [v + self.offset for v in x], "pid": [os.getpid()] * len(x)}

    def close(self) -> None:
        _touch(self.directory, "closed")


class BrokenModel:
    """A model whose weights cannot be found."""

    def __init__(self, path: str) -> None:
        raise FileNotFoundError(f"no model weights at {path}")

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch


class DiesOnce:
    """Kills its own worker (SIGKILL) the first time it meets ``x == poison``: that block
    must be retried on a fresh worker, and no row may come out twice."""

    def __init__(self, directory: str, poison: int) -> None:
        self.directory = directory
        self.poison = poison
        _touch(directory, "built")

    def __call__(self, batch: pa.Table) -> dict:
        x = batch.column("x").to_pylist()
        marker = Path(self.directory, "killed")
        if self.poison in x and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return {"x": x}


class WhereAmI:
    """Records the GPUs its worker is pinned to."""

    def __init__(self) -> None:
        context = fj.worker_context()
        self.where = f"{os.environ.get('CUDA_VISIBLE_DEVICES', '-')}|{context.device}"

    def __call__(self, batch: pa.Table) -> dict:
        return {"x": batch.column("x").to_pylist(), "where": [self.where] * batch.num_rows,
                "pid": [os.getpid()] * batch.num_rows}  # fmt: skip


def logged(batch: pa.Table, directory: str, stage: str, delay: float = 0.0) -> pa.Table:
    """Logs "<stage> start|end <first x> <time>" lines; sleeps ``delay``."""
    first = batch.column("x")[0].as_py()
    with open(Path(directory, "log"), "a") as handle:
        handle.write(f"{stage} start {first} {time.monotonic()}\n")
    if delay:
        time.sleep(delay)
    with open(Path(directory, "log"), "a") as handle:
        handle.write(f"{stage} end {first} {time.monotonic()}\n")
    return batch


def slow_first(batch: pa.Table) -> pa.Table:
    """The block holding x == 0 takes much longer than the others."""
    time.sleep(1.5 if batch.column("x")[0].as_py() == 0 else 0.02)
    return batch


def worker_pid(batch: pa.Table) -> dict:
    return {"x": batch.column("x").to_pylist(), "reader": [os.getpid()] * batch.num_rows}


class LoggedModel:
    """Logs "built <time>" to ``directory``/log when constructed (time.monotonic: one clock
    for every process of the machine)."""

    def __init__(self, directory: str) -> None:
        with open(Path(directory, "log"), "a") as handle:
            handle.write(f"built - {time.monotonic()}\n")

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch


class WaitsForTheOthers:
    """A "model" whose calls take seconds: the block holding x == 0 finishes only once the
    ``others`` other blocks have (or after ``patience`` seconds); each of those takes ``other``
    seconds. Each row says which worker computed it."""

    def __init__(self, directory: str, others: int, other: float, patience: float) -> None:
        self.directory = directory
        self.others = others
        self.other = other
        self.patience = patience

    def __call__(self, batch: pa.Table) -> dict:
        x = batch.column("x").to_pylist()
        if 0 in x:
            give_up = time.monotonic() + self.patience
            while count(self.directory, "done") < self.others and time.monotonic() < give_up:
                time.sleep(0.05)
        else:
            time.sleep(self.other)
            _touch(self.directory, "done")
        return {"x": x, "pid": [os.getpid()] * len(x)}


def stage_pid(batch: pa.Table) -> pa.Table:
    return batch.append_column("stage", pa.array([os.getpid()] * batch.num_rows))
