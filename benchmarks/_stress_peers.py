"""The stress run's peers, under the same faults as forkjoin: how much work they lose.

Peers: ``concurrent.futures.ProcessPoolExecutor`` and joblib (its default ``loky`` backend).

::

    pairs     (index, item) for every item, as forkjoin's stress run sends them
    function  Collecting(Faulty(fn, plan, markers)): the stress run's own fault wrapper, same plan
              (same seed): items that SIGKILL their worker the first time they run (a marker
              file in a directory of this run's own remembers), items that raise
    killer    a thread SIGKILLs one of the peer's worker processes every ``kill_every`` seconds
    bound     the results are read in a thread; after ``time_limit`` seconds the executor is
              shut down and every process it started is killed, so no peer can hang the run

``Collecting`` hands each peer forkjoin's ``on_error="collect"``: an item that raises comes back
as its exception, so only worker deaths stop a peer. Neither survives one: ProcessPoolExecutor
marks itself broken (``BrokenProcessPool``) and fails every pending call; loky's executor breaks
the same way and joblib raises ``TerminatedWorkerError``. A peer's row says how many results came
back before it stopped, against how many were expected, and how long it ran until then.
"""

from __future__ import annotations

import os
import random
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import psutil

# Items per call a peer sends to a worker: both need one for millions of tiny tasks (one item per
# call costs ~50 us of IPC each), and a chunk also bounds how much a kill can take with it.
PEER_CHUNKSIZE = 10_000
# How long the bench waits, after a peer's run has ended or been cut off, for its workers to go.
PEER_EXIT_GRACE = 5.0


@dataclass
class PeerResult:
    """One peer's run under faults."""

    name: str
    expected: int  # results a complete run returns (values and the raising items' exceptions)
    done: int  # results that came back before the peer stopped (or finished)
    seconds: float  # from the start of the call until it stopped (or finished)
    stopped: bool  # True: the peer gave up before returning every result
    error: str  # what it raised when it stopped; "" if it finished
    killed: int  # workers the killer thread SIGKILLed
    leftovers: int  # processes of the peer still alive at the end, killed by the bench

    @property
    def lost(self) -> int:
        return self.expected - self.done

    def as_dict(self) -> dict[str, Any]:
        return dict(asdict(self), lost=self.lost)

    def detail(self) -> str:
        share = self.done / self.expected if self.expected else 0.0
        if self.stopped:
            ending = f"STOPPED after {self.seconds:.2f} s: {self.error}"
        else:
            ending = f"finished in {self.seconds:.2f} s"
        return (
            f"came back {self.done:,} of {self.expected:,} ({share:.1%}), LOST {self.lost:,}; "
            f"{ending}; killed {self.killed}"
        )


class Collecting:
    """Returns an item's exception as its result (``on_error="collect"``), so that a raising
    item does not end a peer's map. Picklable: module level, holding the wrapped callable."""

    def __init__(self, inner: Callable[[Any], Any]) -> None:
        self.inner = inner

    def __call__(self, pair: tuple[int, Any]) -> Any:
        try:
            return self.inner(pair)
        except Exception as exc:
            return (pair[0], exc)


def _first_clause(error: BaseException) -> str:
    """The start of an error's message, to its first comma or full stop: enough for a row."""
    text = (str(error).strip().splitlines() or [""])[0]
    for stop in (", ", ". "):
        text = text.split(stop)[0]
    return text[:80]


def _is_resource_tracker(process: psutil.Process) -> bool:
    """multiprocessing's and loky's resource trackers: one per interpreter, started with the
    first executor and kept until the interpreter exits; they run no task."""
    try:
        return "resource_tracker" in " ".join(process.cmdline())
    except psutil.Error:
        return True


def _new_children(before: set[int]) -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        if child.pid not in before and not _is_resource_tracker(child):
            found.append(child)
    return found


class _Killer(threading.Thread):
    """SIGKILLs one of the peer's worker processes (its new children) every ``every`` seconds."""

    def __init__(self, before: set[int], every: float | None, seed: int) -> None:
        super().__init__(name="bench-peer-killer", daemon=True)
        self.before = before
        self.every = every
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.killed = 0

    def run(self) -> None:
        if not self.every:
            return
        while not self.stop.wait(self.every):
            workers = [p.pid for p in _new_children(self.before)]
            if workers:
                try:
                    os.kill(self.rng.choice(workers), signal.SIGKILL)
                    self.killed += 1
                except ProcessLookupError:
                    pass


def _kill_leftovers(before: set[int]) -> int:
    """Kill what the peer left running; how many there were after a grace period."""
    deadline = time.monotonic() + PEER_EXIT_GRACE
    while _new_children(before) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _new_children(before)
    for process in left:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=PEER_EXIT_GRACE)
    return len(left)


# -- the peers: each returns (an iterator over results, a function that stops it) ---------------


def _futures(fn: Callable[[Any], Any], pairs: Iterable[Any], workers: int) -> tuple[Any, Any]:
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(workers)
    results = pool.map(fn, pairs, chunksize=PEER_CHUNKSIZE)

    def stop() -> None:
        pool.shutdown(wait=False, cancel_futures=True)

    return results, stop


def _joblib(fn: Callable[[Any], Any], pairs: Iterable[Any], workers: int) -> tuple[Any, Any]:
    from joblib import Parallel, delayed

    parallel = Parallel(
        n_jobs=workers, backend="loky", batch_size=PEER_CHUNKSIZE,
        return_as="generator_unordered",
    )  # fmt: skip
    results = parallel(delayed(fn)(pair) for pair in pairs)

    def stop() -> None:
        from joblib.externals.loky import reusable_executor

        executor = reusable_executor._executor
        if executor is not None:
            executor.shutdown(wait=False, kill_workers=True)

    return results, stop


PEERS: dict[str, Callable[[Callable[[Any], Any], Iterable[Any], int], tuple[Any, Any]]] = {
    "concurrent.futures.ProcessPoolExecutor": _futures,
    "joblib (loky)": _joblib,
}


def run_peer(
    name: str, fn: Callable[[Any], Any], plan: dict[int, str], tasks: int, *, workers: int,
    kill_every: float | None, time_limit: float, seed: int = 0,
) -> PeerResult:  # fmt: skip
    """Run peer ``name`` over ``tasks`` items under ``plan``'s faults and the external kills."""
    from forkjoin.bench.faults import Faulty

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with tempfile.TemporaryDirectory(prefix="fj-stress-peer-") as markers:
        function = Collecting(Faulty(fn, plan, markers))
        pairs = ((i, i) for i in range(tasks))
        box: dict[str, Any] = {"done": 0, "error": "", "end": None}
        finished = threading.Event()
        stopper: list[Callable[[], None]] = []
        start = time.perf_counter()

        def consume() -> None:
            try:
                results, stop = PEERS[name](function, pairs, workers)
                stopper.append(stop)
                for _ in results:
                    box["done"] += 1
            except BaseException as exc:  # noqa: BLE001 - how the peer stopped is the result
                box["error"] = f"{type(exc).__name__}: {_first_clause(exc)}"
            finally:
                box["end"] = time.perf_counter()
                finished.set()

        killer = _Killer(before, kill_every, seed)
        consumer = threading.Thread(target=consume, name="bench-peer-consumer", daemon=True)
        consumer.start()
        killer.start()
        in_time = finished.wait(time_limit)
        killer.stop.set()
        killer.join(5.0)
        if not in_time:
            box["error"] = f"no end within {time_limit:g} s: cut off by the bench"
            box["end"] = time.perf_counter()
        for stop in stopper:  # also after a clean end: loky keeps its workers for reuse
            stop()
        leftovers = _kill_leftovers(before)
        consumer.join(PEER_EXIT_GRACE)
    expected = tasks
    done = min(int(box["done"]), expected)
    return PeerResult(
        name=name, expected=expected, done=done, seconds=(box["end"] or start) - start,
        stopped=done < expected, error=str(box["error"]), killed=killer.killed,
        leftovers=leftovers,
    )  # fmt: skip
