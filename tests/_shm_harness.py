"""The caller side of tests/test_shm_lifetime.py: one scenario per run, in a fresh interpreter.

    python tests/_shm_harness.py SCENARIO OUT_DIR

The scenario runs a process pool that moves large arrays through shared-memory segments, and
writes what it saw to ``OUT_DIR/report.json`` (scenarios that wait to be killed first write
``OUT_DIR/ready.json``). Segments go where the environment says (``FORKJOIN_SHM_DIR`` unset:
memfd). The test asserts on the reports; this script only observes, it asserts nothing itself.

Task functions live here at module level, so that workers import them by name: the script's
folder (tests/) is ``sys.path[0]`` and workers receive the caller's ``sys.path``.
"""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import sys
import time

import numpy as np

import forkjoin as fj

MiB = 1024 * 1024
BIG = 16 * MiB
SHM_DIR = os.environ.get("FORKJOIN_SHM_DIR") or None

# /proc/<pid>/maps: "start-end perms offset dev inode   path"
_MAPS_LINE = re.compile(r"^\S+ \S+ \S+ \S+ (\d+)\s+(.*)$")


def segment_inodes(pid: int | str = "self", directory: str | None = SHM_DIR) -> set[int]:
    """Inodes of the forkjoin data segments that process ``pid`` maps: memfds named "forkjoin"
    (not "forkjoin-slot", the per-worker task slot) and unlinked files in ``directory``."""
    prefix = os.path.realpath(directory) + "/" if directory else None
    inodes = set()
    try:
        with open(f"/proc/{pid}/maps") as maps:
            lines = maps.read().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return inodes
    for line in lines:
        match = _MAPS_LINE.match(line)
        if match is None:
            continue
        inode, path = int(match.group(1)), match.group(2)
        if path in ("/memfd:forkjoin (deleted)", "/memfd:forkjoin"):
            inodes.add(inode)
        elif prefix is not None and path.startswith(prefix) and path.endswith(" (deleted)"):
            inodes.add(inode)
    return inodes


def memory_owner(array: np.ndarray) -> object:
    """What finally holds an array's memory (through views and memoryviews)."""
    owner: object = array
    while isinstance(owner, np.ndarray) and owner.base is not None:
        owner = owner.base
    return owner.obj if isinstance(owner, memoryview) else owner


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def listing() -> list[str] | None:
    return sorted(os.listdir(SHM_DIR)) if SHM_DIR else None


def filled(value: float, nbytes: int = BIG) -> np.ndarray:
    return np.full(nbytes // 8, value, dtype=np.float64)


def announce(out: str, name: str, value: object) -> None:
    tmp = os.path.join(out, f".{name}.tmp")
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, os.path.join(out, name))


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


# -- tasks (run in the workers) -----------------------------------------------------------------


def inspect_and_double(a: np.ndarray) -> tuple[np.ndarray, dict]:
    """Double ``a``; report what this worker sees while it holds ``a``: the shm directory's
    listing and the segments it maps (``a`` should be a view of one)."""
    facts = {
        "pid": os.getpid(),
        "listing": listing(),
        "segments": len(segment_inodes()),
        "arg_writeable": bool(a.flags.writeable),
    }
    return a * 2, facts


def double(a: np.ndarray) -> np.ndarray:
    return a * 2


def make(nbytes: int) -> np.ndarray:
    return filled(7.0, nbytes)


def raise_with(a: np.ndarray) -> None:
    raise ValueError(f"task failed holding {a.nbytes} bytes (sum {float(a[:4].sum())})")


def die_holding(a: np.ndarray) -> None:
    result = a * 3  # a big result too, about to be lost with the process
    assert result[0] == a[0] * 3
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)


def hold_then_double(a: np.ndarray) -> np.ndarray:
    time.sleep(0.2)
    return a * 2


def hold_forever(a: np.ndarray, out: str) -> None:
    announce(out, f"holding.{os.getpid()}", {"pid": os.getpid(), "sum": float(a[:4].sum())})
    time.sleep(120)


# -- scenarios (run in the caller) ---------------------------------------------------------------


def normal(out: str) -> dict:
    arrays = [filled(float(i)) for i in range(4)]
    with fj.Pool(2, "process") as pool:
        results = pool.map_list(inspect_and_double, arrays, chunksize=1)
        pids = pool.worker_pids()
        report = {
            "correct": all(
                r.nbytes == BIG and r[0] == 2 * i and r[-1] == 2 * i
                for i, (r, _) in enumerate(results)
            ),
            "worker_facts": [facts for _, facts in results],
            # Zero copy: each result is a view of the mapped segment, and writable.
            "result_bases": sorted({type(memory_owner(r)).__name__ for r, _ in results}),
            "results_writeable": all(r.flags.writeable for r, _ in results),
            "caller_segments_with_results": len(segment_inodes()),
            "listing_with_results": listing(),
        }
    from forkjoin.backends import shm

    report["storage_directory"] = shm.storage.directory
    del results, arrays
    gc.collect()
    report["caller_segments_after"] = len(segment_inodes())
    report["listing_after"] = listing()
    report["workers_alive_after"] = [p for p in pids if pid_alive(p)]
    return report


def task_exception(out: str) -> dict:
    arrays = [filled(float(i)) for i in range(2)]
    with fj.Pool(2, "process") as pool:
        try:
            pool.map_list(raise_with, arrays, chunksize=1)
            error = None
        except fj.TaskError as exc:
            error = f"{type(exc).__name__}: {exc}"
        pids = pool.worker_pids()
        listing_during = listing()
        # The pool still moves big data afterwards, and correctly.
        again = pool.map_list(double, arrays, chunksize=1)
        correct = all(r[0] == 2 * i for i, r in enumerate(again))
        del again
    del arrays
    gc.collect()
    return {
        "error": error,
        "correct_after": correct,
        "listing_during": listing_during,
        "listing_after": listing(),
        "caller_segments_after": len(segment_inodes()),
        "workers_alive_after": [p for p in pids if pid_alive(p)],
    }


def worker_killed(out: str) -> dict:
    arrays = [filled(float(i)) for i in range(2)]
    with fj.Pool(1, "process", retries=0) as pool:
        # A result the worker lent the caller (its segment), then the worker dies holding a big
        # argument and with a big result of its own.
        lent = pool.submit(make, BIG).result(timeout=30)
        victim = pool.worker_pids()
        segments_before = len(segment_inodes())
        try:
            pool.map_list(die_holding, arrays[:1], chunksize=1)
            error = None
        except fj.WorkerCrashedError as exc:
            error = f"{type(exc).__name__}: {exc}"
        listing_during = listing()
        lent_intact = bool(lent[0] == 7.0 and lent[-1] == 7.0)
        again = pool.map_list(double, arrays, chunksize=1)  # on the replacement worker
        correct = all(r[0] == 2 * i for i, r in enumerate(again))
        pids = victim + pool.worker_pids()
        del again, lent
    del arrays
    gc.collect()
    return {
        "error": error,
        "victim_alive": [p for p in victim if pid_alive(p)],
        "lent_intact": lent_intact,
        "correct_after": correct,
        "caller_segments_before": segments_before,
        "listing_during": listing_during,
        "listing_after": listing(),
        "caller_segments_after": len(segment_inodes()),
        "workers_alive_after": [p for p in pids if pid_alive(p)],
    }


def parent_raises(out: str) -> dict:
    arrays = [filled(float(i)) for i in range(4)]
    pids: list[int] = []
    raised = False
    try:
        with fj.Pool(2, "process") as pool:
            results = pool.imap(hold_then_double, arrays, chunksize=1)
            first = next(results)  # a big result alive here, more tasks running
            pids = pool.worker_pids()
            listing_during = listing()
            segments_during = len(segment_inodes())
            raise RuntimeError("the caller fails mid-map")
    except RuntimeError:
        raised = True
    del first, results, arrays
    gc.collect()
    return {
        "raised": raised,
        "listing_during": listing_during,
        "caller_segments_during": segments_during,
        "listing_after": listing(),
        "caller_segments_after": len(segment_inodes()),
        "workers_alive_after": [p for p in pids if pid_alive(p)],
    }


def parent_killed(out: str) -> dict:
    """Big results alive here, workers holding big arguments; then wait to be SIGKILLed."""
    arrays = [filled(float(i)) for i in range(4)]
    pool = fj.Pool(2, "process")
    results = pool.map_list(double, arrays[:2], chunksize=1)
    futures = [pool.submit(hold_forever, a, out) for a in arrays[2:]]
    deadline = time.monotonic() + 30
    while len([n for n in os.listdir(out) if n.startswith("holding.")]) < 2:
        if time.monotonic() > deadline or any(f.done() for f in futures):
            return {"error": "the workers never held their arguments"}
        time.sleep(0.01)
    announce(
        out,
        "ready.json",
        {
            "pid": os.getpid(),
            "workers": pool.worker_pids(),
            "caller_segments": len(segment_inodes()),
            "results_ok": all(r[0] == 2 * i for i, r in enumerate(results)),
        },
    )
    time.sleep(120)
    return {"error": "not killed"}


def memory_freed(out: str) -> dict:
    report: dict = {"start": len(segment_inodes())}
    pool = fj.Pool(2, "process")
    # Big results for small arguments: the only segments the caller maps are results.
    results = pool.map_list(make, [BIG] * 4, chunksize=1)
    report["with_results"] = len(segment_inodes())
    report["results_ok"] = all(r[0] == 7.0 and r.nbytes == BIG for r in results)
    del results
    gc.collect()
    report["results_dropped"] = len(segment_inodes())
    # Big arguments as well: their segments go back to the caller's pool, kept for reuse.
    arrays = [filled(float(i)) for i in range(4)]
    results = pool.map_list(double, arrays, chunksize=1)
    report["both_ok"] = all(r[0] == 2 * i for i, r in enumerate(results))
    del results, arrays
    gc.collect()
    report["before_shutdown"] = len(segment_inodes())
    pool.shutdown(wait=True)
    del pool
    gc.collect()
    report["after_shutdown"] = len(segment_inodes())
    return report


def fd_hygiene(out: str) -> dict:
    gc.collect()
    start = fd_count()
    arrays = [filled(float(i)) for i in range(4)]
    with fj.Pool(2, "process") as pool:
        results = pool.map_list(double, arrays, chunksize=1)
        made = pool.map_list(make, [BIG] * 4, chunksize=1)
        ok = all(r[0] == 2 * i for i, r in enumerate(results)) and all(m[0] == 7 for m in made)
        during = fd_count()
        del results, made
        gc.collect()
        # Once more after the caller let go: segments are reused, not piled up.
        again = pool.map_list(double, arrays, chunksize=1)
        del again
    del arrays
    gc.collect()
    return {"ok": ok, "start": start, "during": during, "end": fd_count()}


def _tmpfs_facts() -> dict:
    st = os.statvfs(SHM_DIR)
    return {"size": st.f_blocks * st.f_frsize, "free": st.f_bfree * st.f_frsize}


def tmpfs_overflow(out: str) -> dict:
    """16 MiB both ways through a 4 MiB tmpfs: the segments must move elsewhere, not crash."""
    report = {"tmpfs_before": _tmpfs_facts()}
    arrays = [filled(float(i)) for i in range(2)]
    with fj.Pool(2, "process") as pool:
        pool.map_list(abs, range(8), chunksize=1)  # both workers up, nothing in shared memory
        report["pids_before"] = sorted(pool.worker_pids())
        results = pool.map_list(double, arrays, chunksize=1)
        report["correct"] = all(
            r.nbytes == BIG and r[0] == 2 * i and r[-1] == 2 * i for i, r in enumerate(results)
        )
        report["pids_after"] = sorted(pool.worker_pids())
        report["listing_during"] = listing()
        del results
    del arrays
    gc.collect()
    report["listing_after"] = listing()
    report["tmpfs_after"] = _tmpfs_facts()
    return report


def tmpfs_fits(out: str) -> dict:
    """1 MiB arrays through a 4 MiB tmpfs: they fit, and really go through it."""
    report = {"tmpfs_before": _tmpfs_facts(), "rounds": []}
    with fj.Pool(1, "process") as pool:
        for round_ in range(2):
            result = pool.map_list(double, [filled(float(round_), MiB)], chunksize=1)[0]
            report["rounds"].append(
                {
                    "correct": bool(result.nbytes == MiB and result[0] == 2 * round_),
                    "caller_segments": len(segment_inodes()),
                    "tmpfs": _tmpfs_facts(),
                    "listing": listing(),
                }
            )
            del result
            gc.collect()
    gc.collect()
    report["listing_after"] = listing()
    report["tmpfs_after"] = _tmpfs_facts()
    return report


def threshold_env(out: str) -> dict:
    """A 128 kB array (under the default out-of-band threshold, over the one the environment
    asks for): does it travel in a segment?"""
    with fj.Pool(1, "process") as pool:
        result = pool.map_list(make, [128 * 1024], chunksize=1)[0]
        report = {
            "threshold_env": os.environ.get("FORKJOIN_OUT_OF_BAND_MIN_BYTES"),
            "correct": bool(result[0] == 7.0),
            "caller_segments": len(segment_inodes()),
        }
        del result
    return report


def main() -> None:
    scenario, out = sys.argv[1], sys.argv[2]
    import _shm_harness  # this file under its module name: tasks pickle by reference

    report = getattr(_shm_harness, scenario)(out)
    announce(out, "report.json", report)


if __name__ == "__main__":
    main()
