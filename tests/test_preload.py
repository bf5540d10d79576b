"""``Pool(preload=...)`` and the data layer's warm-up (issue 18): workers import the modules a
job needs as they start, or while the plan is built, not on its first task."""

from __future__ import annotations

import importlib
import os
import sys
import time

import pytest

import forkjoin as fj
from forkjoin.engine.preload import preload_running

pytestmark = pytest.mark.timeout(90)
MODULE = "xml.dom.minidom"  # imported by nothing else in a worker


def loaded(_: object = None) -> bool:
    return MODULE in sys.modules


def remember_order(path: str) -> None:
    with open(path, "a") as handle:
        handle.write(f"initializer saw {MODULE in sys.modules}\n")


def test_preload_imports_in_each_worker_before_the_initializer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "log"
    with fj.Pool(2, backend="process", preload=[MODULE], initializer=remember_order,
                 initargs=(str(log),)) as pool:  # fmt: skip
        assert all(pool.map(loaded, range(8), chunksize=1))
    lines = log.read_text().splitlines()
    assert lines and set(lines) == {"initializer saw True"}, "preload runs first, then the user's"
    with fj.Pool(1, backend="process") as pool:
        assert pool.submit(loaded).result() is False


def where_the_probe_was_imported(_: object = None) -> tuple[int, int]:
    probe = importlib.import_module("fj_preload_probe")  # written by the test, not installed
    return probe.IMPORTED_IN, os.getppid()


def test_the_zygote_imports_preload_once_and_the_workers_start_with_it(  # type: ignore[no-untyped-def]
    tmp_path, monkeypatch
) -> None:
    """The modules are imported in the zygote, before it forks the first workers: each worker
    finds the module imported by its parent (its pages shared, its import paid once)."""
    (tmp_path / "fj_preload_probe.py").write_text("import os\nIMPORTED_IN = os.getpid()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with fj.Pool(2, backend="process", preload=["fj_preload_probe"]) as pool:
        seen = set(pool.map(where_the_probe_was_imported, range(8), chunksize=1))
        pids = pool._backend.worker_pids()  # type: ignore[attr-defined]
    assert len(pids) == 2
    assert len(seen) == 1, seen  # one import, in one process: the workers' parent
    ((imported_in, parent),) = seen
    assert imported_in == parent and imported_in not in pids
    with fj.Pool(2, backend="process") as pool:  # without preload=: each worker imports its own
        seen = set(pool.map(where_the_probe_was_imported, range(8), chunksize=1))
    assert all(imported_in != parent for imported_in, parent in seen)


def test_a_running_shared_pool_is_warmed_in_the_background() -> None:
    from forkjoin.engine.api import shared_pools

    shared_pools.shutdown()
    fj.map(abs, range(4), workers=2, backend="process", chunksize=1)  # the shared pool runs
    events = shared_pools._pools["process"][2]
    assert preload_running([MODULE]) is True
    deadline = time.monotonic() + 60
    while not all(fj.map(loaded, range(8), workers=2, backend="process", chunksize=1)):
        assert time.monotonic() < deadline, "the workers never imported the module"
        time.sleep(0.1)
    submitted = events.stats().tasks_submitted
    assert preload_running([MODULE]) is True  # asked again (a join reads twice): no new tasks
    time.sleep(0.2)
    assert events.stats().tasks_submitted == submitted
    assert preload_running([MODULE], backend_name="threads") is False


def test_a_shared_pool_started_by_a_call_with_preload_imports_the_modules_as_it_starts() -> None:
    """What forkjoin.data's jobs do: the shared pool that their call starts has the modules
    imported before its first task, not during it. A pool that a plain ``fj.map`` starts
    imports nothing extra, even after a data job ran in the program."""
    from forkjoin.engine import preload
    from forkjoin.engine.api import shared_pools

    shared_pools.shutdown()  # a running pool keeps its workers: start a fresh one
    try:
        assert all(fj.map(loaded, range(8), workers=2, backend="process", chunksize=1,
                          preload=[MODULE]))  # fmt: skip
        assert preload.shared_pool_initializer("threads", [MODULE]) == {}  # one interpreter
        shared_pools.shutdown()
        assert not any(fj.map(loaded, range(8), workers=2, backend="process", chunksize=1))
    finally:
        shared_pools.shutdown()


def test_a_plain_map_after_a_data_job_starts_light_workers(tmp_path) -> None:
    """Reading data once must not make every later shared pool import pyarrow and pandas
    in each worker before it is ready (it made plain fj.map start ~0.5 s late, unevenly)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from forkjoin.engine.api import shared_pools

    pq.write_table(pa.table({"x": list(range(10))}), tmp_path / "a.parquet")
    assert fj.data.read_parquet(str(tmp_path / "a.parquet")).count() == 10
    shared_pools.shutdown()
    try:
        imported = fj.map(_has_pandas, range(4), workers=2, backend="process", chunksize=1)
        assert not any(imported)
    finally:
        shared_pools.shutdown()


def _has_pandas(_: object) -> bool:
    return "pandas" in sys.modules


def test_a_pool_that_preloaded_the_modules_gets_no_warm_up_task() -> None:
    """Warming a pool that already imported the modules would only hold its workers."""
    from forkjoin.engine.api import shared_pools

    shared_pools.shutdown()
    try:
        fj.map(abs, range(4), workers=2, backend="process", chunksize=1, preload=[MODULE])
        events = shared_pools._pools["process"][2]
        submitted = events.stats().tasks_submitted
        assert submitted >= 4
        assert preload_running([MODULE]) is True
        time.sleep(0.2)  # the warm-up job, if one were started, submits from a thread
        assert events.stats().tasks_submitted == submitted
    finally:
        shared_pools.shutdown()


def warmed_up(_: object = None) -> tuple[bool, bool]:
    """Whether this worker ran forkjoin.data.warmup, and whether pyarrow's pandas shim is set up
    (pyarrow does that on the first table it builds: the first-use cost the warm-up moves)."""
    import pyarrow

    shim = pyarrow.lib._pandas_api  # its ``_pd`` stays None until pyarrow's first conversion
    return "forkjoin.data.warmup" in sys.modules, shim._pd is not None


def test_a_data_job_s_workers_have_run_the_parquet_warm_up_before_their_first_task() -> None:
    from forkjoin.data.readers import DATA_MODULES
    from forkjoin.engine.api import shared_pools

    assert "forkjoin.data.warmup" in DATA_MODULES
    shared_pools.shutdown()  # a fresh shared pool, started as a data job starts it
    try:
        ran = fj.map(warmed_up, range(6), workers=2, backend="process", chunksize=1,
                     preload=DATA_MODULES)  # fmt: skip
        assert set(ran) == {(True, True)}
    finally:
        shared_pools.shutdown()


def test_the_warm_up_writes_nothing_and_runs_again(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import importlib
    import os

    import forkjoin.data.warmup as warmup

    monkeypatch.chdir(tmp_path)
    importlib.reload(warmup)
    warmup.warm_up()
    assert os.listdir(tmp_path) == [], "an in-memory round trip: no file anywhere"
