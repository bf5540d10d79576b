"""What a fault costs (issue 21): once a job has seen a worker die, or where the engine itself
stops workers (timeout=, memory_limit=), process workers stream the results of a long chunk as
they go, so a crash costs the last few milliseconds of the chunk, not the chunk; and the chunker
sizes chunks for the rate of faults it sees. Each run logs every execution of every item to a
file, so what was computed twice is counted outside the code under test."""

from __future__ import annotations

import functools
import importlib
import math
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

import forkjoin as fj
from forkjoin.engine.chunking import TARGET_TASK_SECONDS, TASK_OVERHEAD_SECONDS, AutoChunker

pytestmark = pytest.mark.timeout(180)

ITEM_SECONDS = 0.001


def _logged(x: int, log: str, markers: str, kill_once=frozenset(), raising=frozenset(), slow=None):
    """Runs item ``x``: logs it, SIGKILLs its worker the first time it meets an item of
    ``kill_once``, raises on ``raising``, sleeps long on ``slow``, else returns x + 1."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{x}\n".encode())
    finally:
        os.close(fd)
    if x in kill_once:
        try:
            os.close(os.open(os.path.join(markers, f"k{x}"), os.O_CREAT | os.O_EXCL))
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(5)
        except FileExistsError:
            pass
    if x in raising:
        raise ValueError(f"bad item {x}")
    time.sleep(slow if x == getattr(slow, "item", None) else ITEM_SECONDS)
    return x + 1


class _Slow(float):
    """A sleep length that names the one item that sleeps it."""

    item: int


def _runs(log: Path) -> Counter[int]:
    return Counter(int(line) for line in log.read_text().split())


def test_a_crash_keeps_the_results_streamed_before_it(tmp_path):
    log = tmp_path / "runs.log"
    fn = functools.partial(_logged, log=str(log), markers=str(tmp_path), kill_once={1500})
    with fj.Pool(workers=2, retries=0) as pool:
        # timeout= makes the engine stream from the start (it may stop workers itself)
        results = pool.map_list(fn, range(3000), chunksize=1000, timeout=120)
        records = pool.events.task_records()
    assert results == [x + 1 for x in range(3000)]
    runs = _runs(log)
    assert set(runs) == set(range(3000))
    again = [x for x in range(1000, 1500) if runs[x] > 1]
    # Without streaming, all 500 items before the crash would run again; with it, only those
    # finished after the last streamed batch (~5-10 ms of 1 ms items), with room for a busy
    # machine.
    assert len(again) <= 100, f"{len(again)} of the 500 items before the crash ran again"
    assert runs[1500] == 2
    assert all(runs[x] == 1 for x in range(3000) if not 1000 <= x <= 1500)
    assert len(records) <= 5  # three chunks, and one rest of the crashed chunk (two at most)


def test_failures_in_a_streamed_chunk_keep_their_places(tmp_path):
    log = tmp_path / "runs.log"
    raising = {3, 400, 1299, 1501, 1777, 2999}
    fn = functools.partial(
        _logged, log=str(log), markers=str(tmp_path), kill_once={1500}, raising=raising
    )
    with fj.Pool(workers=2, retries=0) as pool:
        results = pool.map_list(fn, range(3000), chunksize=1000, timeout=120, on_error="collect")
    for x, value in enumerate(results):
        if x in raising:
            assert isinstance(value, fj.TaskError) and f"bad item {x}" in str(value), x
            assert value.index == x
        else:
            assert value == x + 1, x


def test_a_chunk_over_its_timeout_keeps_what_finished_before_the_slow_item(tmp_path):
    log = tmp_path / "runs.log"
    slow = _Slow(60.0)
    slow.item = 25
    fn = functools.partial(_logged, log=str(log), markers=str(tmp_path), slow=slow)
    with fj.Pool(workers=2, retries=0) as pool:
        results = pool.map_list(fn, range(40), chunksize=40, timeout=1.5, on_error="collect")
    assert isinstance(results[25], fj.TaskTimeoutError)
    assert [r for x, r in enumerate(results) if x != 25] == [x + 1 for x in range(40) if x != 25]
    runs = _runs(log)
    assert all(runs[x] == 1 for x in range(20)), "items streamed before the timeout ran again"


def test_a_job_that_sees_crashes_streams_and_loses_little(tmp_path):
    # auto chunks: no streaming until the first crash; after it, every chunk streams and the
    # chunker shortens chunks; every item comes back once and little runs twice
    log = tmp_path / "runs.log"
    kills = set(range(150, 3000, 300))
    fn = functools.partial(_logged, log=str(log), markers=str(tmp_path), kill_once=kills)
    with fj.Pool(workers=2, retries=0) as pool:
        results = pool.map_list(fn, range(3000))
    assert results == [x + 1 for x in range(3000)]
    runs = _runs(log)
    again = sum(count - 1 for x, count in runs.items() if x not in kills)
    # each kill may cost the unstreamed end of one chunk: ~20 ms before the first, a few ms after
    assert again <= 40 * len(kills), f"{again} items ran again for {len(kills)} kills"


def test_the_chunker_shortens_chunks_for_the_rate_of_faults():
    chunker = AutoChunker(workers=2, total=None)
    for _ in range(10):
        chunker.observe_compute(1_000, 0.002)  # 2 us per item
    assert chunker.next_size() == round(TARGET_TASK_SECONDS / 2e-6)
    for _ in range(10):
        chunker.observe_compute(1_000, 0.002)
        chunker.observe_fault()
    # 10 faults in the 40 ms of compute it remembers: one per ~4 ms; Young's interval is then
    # sqrt(2 * round trip * 4 ms) (0.89 ms for 100 us: ~447 items of 2 us)
    expected = math.sqrt(2 * TASK_OVERHEAD_SECONDS * 0.004) / 2e-6
    assert 0.9 * expected <= chunker.next_size() <= 1.05 * expected, chunker.next_size()
    for _ in range(2000):  # no faults for a long while: back to the usual length
        chunker.observe_compute(1_000, 0.002)
    assert chunker.next_size() == round(TARGET_TASK_SECONDS / 2e-6)
    fixed = AutoChunker(workers=2, total=None, chunksize=64)
    fixed.observe_fault()
    assert fixed.next_size() == 64


_LEARNED_MODULE = """
import os, signal, time

with open({log!r}, "a") as log:
    log.write(f"{{os.getpid()}}\\n")  # once per interpreter that imports this module


def kill_once(x, markers):
    if x % 100 == 7:
        try:
            os.close(os.open(os.path.join(markers, f"k{{x}}"), os.O_CREAT | os.O_EXCL))
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(5)
        except FileExistsError:
            pass
    return x + 1
"""


def test_replacement_workers_do_not_import_the_users_module_again(tmp_path, monkeypatch):
    # the zygote imports the modules of the functions the pool ran before it forks a
    # replacement: a job whose items kill workers does not pay the user's imports per death
    log = tmp_path / "imports.log"
    (tmp_path / "fj_learned_module.py").write_text(_LEARNED_MODULE.format(log=str(log)))
    monkeypatch.syspath_prepend(str(tmp_path))
    learned = importlib.import_module("fj_learned_module")  # written above, not installed

    fn = functools.partial(learned.kill_once, markers=str(tmp_path))
    with fj.Pool(workers=2, retries=0) as pool:
        results = pool.map_list(fn, range(500), chunksize=50)
        started = pool.stats().workers_started
    assert results == [x + 1 for x in range(500)]
    assert started >= 2 + 4  # five items killed their worker once (the last one may be starting)
    importers = [int(pid) for pid in log.read_text().split() if int(pid) != os.getpid()]
    # the first two workers, and the zygote once: not each of the five replacements
    assert len(importers) <= 3, f"{len(importers)} imports for {started} workers"


def _pid_after(x: int, log: str, markers: str, kill_once=frozenset()) -> int:
    _logged(x, log, markers, kill_once=kill_once)
    return os.getpid()


def _spares(pool: fj.Pool) -> set[int]:
    backend = pool._backend
    zygote = backend._zygote
    return set(backend.service_pids()) - ({zygote.proc.pid} if zygote is not None else set())


def test_after_a_crash_a_spare_worker_stands_by_for_the_next(tmp_path):
    run = functools.partial(_pid_after, log=str(tmp_path / "runs.log"), markers=str(tmp_path))
    with fj.Pool(workers=2, retries=1) as pool:
        assert _spares(pool) == set()  # nothing extra until a worker dies
        pool.map_list(functools.partial(run, kill_once={3}), range(10))
        deadline = time.monotonic() + 30
        while not _spares(pool) and time.monotonic() < deadline:
            time.sleep(0.05)
        (spare,) = _spares(pool)
        assert len(pool.worker_pids()) == 2 and spare not in pool.worker_pids()
        ran_on = set(pool.map_list(run, range(200)))
        assert spare not in ran_on  # a spare takes no work while the pool is whole
        pool.map_list(functools.partial(run, kill_once={5}), range(10))
        assert spare in pool.worker_pids()  # it took the place of the worker that died
        assert len(pool.worker_pids()) == 2


@pytest.mark.parametrize("workers", [1, 3])
def test_spares_grow_while_deaths_outrun_starts_but_never_past_the_pool_size(tmp_path, workers):
    """Deaths in a burst (each item kills its worker once) find the spare still starting, so
    the pool keeps more spares; at most as many as it has workers (and MAX_SPARES)."""
    from forkjoin.backends.process_lifecycle import MAX_SPARES

    run = functools.partial(_pid_after, log=str(tmp_path / "runs.log"), markers=str(tmp_path))
    kills = frozenset(range(0, 40, 2))
    with fj.Pool(workers=workers, retries=1) as pool:
        pids = pool.map_list(functools.partial(run, kill_once=kills), range(40), chunksize=1)
        assert len(pids) == 40
        assert len(set(pids)) > len(kills) // 2  # the killing items ran again on new workers
        wanted = pool._backend._spares_wanted
        assert 1 <= wanted <= min(MAX_SPARES, workers)
        deadline = time.monotonic() + 30
        while len(_spares(pool)) < wanted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_spares(pool)) == wanted
        assert len(pool.worker_pids()) == workers
        # a death with every spare standing by: one of them takes the place at once
        spares = _spares(pool)
        more = functools.partial(run, kill_once=frozenset({100}))
        assert len(pool.map_list(more, range(100, 110), chunksize=1)) == 10
        deadline = time.monotonic() + 30
        while len(pool.worker_pids()) < workers and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(pool.worker_pids()) == workers
        assert spares & set(pool.worker_pids())  # a spare took the dead worker's place


def test_a_killed_zygote_leaves_the_pool_working_with_fresh_interpreters(tmp_path):
    """The zygote forks replacements without the manager waiting for it; if it dies (here
    SIGKILLed, with spawns maybe in flight), replacements start as fresh interpreters and
    nothing is lost."""
    run = functools.partial(_pid_after, log=str(tmp_path / "runs.log"), markers=str(tmp_path))
    with fj.Pool(workers=2, retries=2) as pool:
        pool.map_list(functools.partial(run, kill_once={1}), range(20), chunksize=1)
        zygote = pool._backend._zygote
        assert zygote is not None
        os.kill(zygote.proc.pid, signal.SIGKILL)
        kills = frozenset({31, 35, 39})
        pids = pool.map_list(functools.partial(run, kill_once=kills), range(30, 50), chunksize=1)
        assert len(pids) == 20
        ran = Counter(int(line) for line in (tmp_path / "runs.log").read_text().split())
        # A kill item ran once to kill its worker and once more to succeed; it (or any item)
        # may run again when its worker dies on the next item before sending that result
        # (results wait up to RESULT_FLUSH_SECONDS to go out together): rerun, not lost.
        assert all(ran[x] >= 1 for x in range(30, 50)) and all(ran[x] >= 2 for x in kills)
        assert pool._backend._zygote is None  # started the slow way from then on
        deadline = time.monotonic() + 30
        while len(pool.worker_pids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(pool.worker_pids()) == 2


def test_the_zygote_learns_what_a_wrapped_function_needs_to_unpickle():
    """A function that travels by value (from ``__main__``, here made so) inside a wrapper
    object: the wrapper's class names one module, the pickle stream names cloudpickle too;
    the zygote learns both, so a replacement does not import them at each death."""
    import cloudpickle

    from forkjoin.backends.process_zygote import function_modules, pickled_modules

    namespace = {"__name__": "__main__"}
    exec("def scale(factor, x):\n    return factor * x\n", namespace)
    wrapped = functools.partial(namespace["scale"], 3)
    stream = cloudpickle.dumps(wrapped, protocol=5)
    assert "cloudpickle" in " ".join(pickled_modules(stream))
    assert "functools" in pickled_modules(stream)
    assert pickled_modules(b"not a pickle") == []
    with fj.Pool(workers=1) as pool:
        assert pool.map_list(wrapped, [1, 2]) == [3, 6]
        backend = pool._backend
        assert any(name.startswith("cloudpickle") for name in backend._modules_run)
    assert "cloudpickle" in function_modules(namespace["scale"])


_RAISING_MODULE = """
import sys


def fail_on_zero(x):
    if x == 0:
        raise ValueError("item zero")
    heavy = ("forkjoin.errors", "concurrent.futures.process")
    return [name for name in heavy if name in sys.modules]
"""


def test_reporting_an_item_s_exception_imports_little_in_the_worker(tmp_path, monkeypatch):
    # forkjoin.errors imports concurrent.futures.process and ~35 modules with it (10-45 ms):
    # a worker sends an item's exception without it (forkjoin/_portable.py), so a job whose
    # items both raise and kill their worker does not pay that in every replacement worker
    (tmp_path / "fj_raising_module.py").write_text(_RAISING_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("fj_raising_module")  # written above, not installed
    with fj.Pool(workers=1) as pool:
        results = pool.map_list(module.fail_on_zero, range(3), chunksize=1, on_error="collect")
    assert isinstance(results[0], ValueError) and "item zero" in str(results[0])
    assert results[1:] == [[], []], "the worker imported forkjoin.errors to report a failure"
