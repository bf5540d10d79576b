"""The process backend's data plane: large buffers cross in shared memory, without copies.

What is checked here, through real workers: every kind of payload comes back equal (numpy,
pyarrow, pandas, torch, buffers, big pickle streams); large results are writable zero-copy views
of a segment; segments are reused instead of created per task, on both sides; ``fj.shared``
objects and big captured functions are copied once, not once per task; errors, crashes, file
descriptors and ``memory_limit=`` behave with big payloads as with small ones.

Task functions are module-level here (workers import this module by name, as they do _tasks).
"""

from __future__ import annotations

import ctypes
import functools
import gc
import mmap
import os
import pickle
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import long_lived_pool, wait_until

import forkjoin as fj
from forkjoin.backends import buffers

MiB = 2**20
# Comfortably above the out-of-band threshold, so these take the shared-memory path.
LARGE = 2 * MiB
assert buffers.OUT_OF_BAND_MIN_BYTES <= LARGE // 4


# -- task functions (module level: workers import this module) ------------------------------------


def identity(x: Any) -> Any:
    return x


def array_sum(a: np.ndarray) -> float:
    return float(a.sum())


def add_one_and_sum(a: np.ndarray) -> tuple[float, bool]:
    writable = bool(a.flags.writeable)
    a += 1
    return float(a.sum()), writable


def full_array(value: int, nbytes: int = 16 * MiB) -> np.ndarray:
    return np.full(nbytes // 8, value, dtype=np.float64)


def plus_one(a: np.ndarray) -> np.ndarray:
    return a + 1


def worker_result_segments(_: Any = None) -> tuple[int, int, int]:
    """(pid, created, reused) of this worker's pool of result segments."""
    from forkjoin.backends import process_worker

    workers = [o for o in gc.get_objects() if isinstance(o, process_worker.Worker)]
    assert len(workers) == 1, workers
    return os.getpid(), workers[0].pool.created, workers[0].pool.reused


def reaches_mmap(obj: Any) -> bool:
    """Whether an array's chain of owners ends in an ``mmap.mmap`` (a view of a segment), maybe
    through the ctypes exporter a receiver puts over a mapping it keeps."""
    seen = 0
    while obj is not None and seen < 50:
        if isinstance(obj, mmap.mmap):
            return True
        if isinstance(obj, ctypes.Array):
            owners = (obj._objects or {}).values()  # from_buffer keeps its source here
            return any(isinstance(getattr(owner, "obj", owner), mmap.mmap) for owner in owners)
        obj = obj.obj if isinstance(obj, memoryview) else getattr(obj, "base", None)
        seen += 1
    return False


def shared_row(handle: fj.Shared[np.ndarray], i: int) -> float:
    table = handle.get()
    return float(table[i * 1000 : (i + 1) * 1000].sum())


def shared_row_item(pair: tuple[fj.Shared[np.ndarray], int]) -> float:
    handle, i = pair
    return shared_row(handle, i)


def shared_offset(handle: fj.Shared[dict[str, int]], i: int) -> int:
    return handle.get()["offset"] + i


def probe_shared(handle: fj.Shared[np.ndarray], _: int) -> tuple[int, int, bool, bool, bool]:
    """(pid, id of the object, write refused, zero-copy, writeable flag) as a worker sees it."""
    table = handle.get()
    try:
        table[0] = -1.0
        refused = False
    except ValueError:
        refused = True
    return os.getpid(), id(table), refused, reaches_mmap(table), bool(table.flags.writeable)


def use_weights(i: int, weights: np.ndarray) -> tuple[int, int, float, bool]:
    return os.getpid(), id(weights), float(weights[i]), reaches_mmap(weights)


def store_in_state(table: np.ndarray) -> None:
    fj.worker_context().state["table"] = table


def read_state(i: int) -> tuple[float, int]:
    table = fj.worker_context().state["table"]
    return float(table[i]), int(table.size)


def keep_argument(a: np.ndarray) -> float:
    """Keep the argument in this worker after the task (its segment must then stay untouched)."""
    fj.worker_context().state.setdefault("kept", []).append(a)
    return float(a[0])


def clear_state(_: Any = None) -> None:
    fj.worker_context().state.clear()


def kept_arguments(_: Any = None) -> list[tuple[float, float]]:
    return [(float(a.min()), float(a.max())) for a in fj.worker_context().state.get("kept", [])]


def fail_on_big(a: np.ndarray) -> float:
    if a.size > 1000:
        raise ValueError(f"too big: {a.size}")
    return float(a.sum())


def unpicklable_on(i: int) -> dict[str, Any]:
    result: dict[str, Any] = {"big": full_array(i, LARGE)}
    if i == 1:
        result["lock"] = threading.Lock()
    return result


def kill_first_time(path: str, a: np.ndarray) -> float:
    """SIGKILL this worker on the first call (counted in a file), then sum the array."""
    with open(path, "a+") as f:
        f.seek(0)
        count = len(f.read())
        f.write("x")
    if count == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return float(a.sum())


def state_sum_or_die(path: str, _: int) -> float:
    """Kill this worker the first time (counted in a file); then sum the initializer's array."""
    kill_first_time(path, np.zeros(1))
    return float(fj.worker_context().state["table"].sum())


def return_a_lambda(offset: int) -> dict[str, Any]:
    return {"big": full_array(offset, LARGE), "fn": lambda x: x + offset}


def make_handle(n: int) -> Any:
    return fj.shared(np.arange(float(n)))


def return_handle(handle: fj.Shared[Any]) -> fj.Shared[Any]:
    return handle


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool() -> Iterator[fj.Pool]:
    yield from long_lived_pool(2, "process")


@pytest.fixture(scope="module")
def pool1() -> Iterator[fj.Pool]:
    """One worker: what the worker holds can be inspected by the next task."""
    yield from long_lived_pool(1, "process")


def roundtrip(pool: fj.Pool, obj: Any) -> Any:
    return pool.submit(identity, obj).result(timeout=60)


# -- 1. round trips -------------------------------------------------------------------------------


def _rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _structured() -> np.ndarray:
    n = LARGE // 16
    a = np.zeros(n, dtype=[("a", "<i4"), ("b", "<f8"), ("c", "S4")])
    a["a"] = np.arange(n)
    a["b"] = np.arange(n) / 3
    a["c"] = b"xyz"
    return a


def _datetimes() -> np.ndarray:
    a = np.arange(LARGE // 8).astype("datetime64[s]")
    a[5] = np.datetime64("NaT")
    return a


def _numpy_cases() -> dict[str, Callable[[], Any]]:
    big = functools.partial(np.arange, LARGE // 8, dtype=np.float64)
    return {
        "float64-large": lambda: _rng().random(LARGE // 8),
        "float64-small": lambda: np.arange(10.0),
        "float64-nan": lambda: np.array([np.nan, 1.0, np.inf] * (LARGE // 24)),
        "int8-large": lambda: _rng().integers(-128, 127, LARGE, dtype=np.int8),
        "int8-small": lambda: np.arange(-5, 5, dtype=np.int8),
        "uint64-big-endian": lambda: np.arange(LARGE // 8, dtype=">u8"),
        "float16": lambda: np.arange(LARGE // 2, dtype=np.float16),
        "bool-large": lambda: _rng().random(LARGE) > 0.5,
        "bool-small": lambda: np.array([True, False, True]),
        "complex128-large": lambda: _rng().random(LARGE // 16) * (1 + 2j),
        "complex64-small": lambda: np.array([1 + 1j, 2 - 3j], dtype=np.complex64),
        "structured-large": _structured,
        "structured-small": lambda: np.array([(1, 2.5)], dtype=[("i", "i2"), ("f", "f4")]),
        "datetime64-large": _datetimes,
        "timedelta64-small": lambda: np.array([1, 2, 3], dtype="timedelta64[ms]"),
        "2d-large": lambda: big().reshape(512, -1),
        "strided-view": lambda: np.arange(3 * LARGE // 8, dtype=np.float64)[::3],
        "transposed-2d": lambda: big().reshape(512, -1).T,
        "fortran-order": lambda: np.asfortranarray(big().reshape(512, -1)),
        "negative-stride": lambda: big()[::-1],
        "read-only": lambda: np.frombuffer(bytes(LARGE), dtype=np.int32),
        "zero-length": lambda: np.zeros((0, 3)),
        "zero-length-1d": lambda: np.array([], dtype=np.float32),
        "zero-d": lambda: np.array(3.5),
        "zero-d-int8": lambda: np.array(7, dtype=np.int8),
        "object-small": lambda: np.array([1, "a", None, {"k": [1, 2]}], dtype=object),
        "object-large": lambda: np.array([f"s{i}" for i in range(100_000)], dtype=object),
        "dict-of-arrays": lambda: {"x": big(), "y": np.arange(3), "z": _rng().random(LARGE // 8)},
        "mixed-list": lambda: [
            big(),
            1,
            "text",
            None,
            (np.arange(4), 2.5),
            {"nested": np.ones(LARGE // 8, dtype=np.int64)},
        ],
    }


def _buffer_cases() -> dict[str, Callable[[], Any]]:
    return {
        "bytes-large": lambda: bytes(range(256)) * (LARGE // 256),
        "bytes-small": lambda: b"abc",
        "bytearray-large": lambda: bytearray(bytes(range(256)) * (LARGE // 256)),
        "bytearray-small": lambda: bytearray(b"abc"),
        "str-large": lambda: "forkjoin " * (LARGE // 9),
        "list-of-ints-large-stream": lambda: list(range(200_000)),
        "memoryview-bytes-large": lambda: memoryview(bytes(range(256)) * (LARGE // 256)),
        "memoryview-bytes-small": lambda: memoryview(b"hello"),
        "memoryview-cast-double": lambda: memoryview(
            np.arange(LARGE // 8, dtype=np.float64).tobytes()
        ).cast("d"),
        "memoryview-cast-double-small": lambda: memoryview(bytearray(64)).cast("d"),
        "memoryview-2d": lambda: memoryview(
            np.arange(LARGE // 8, dtype=np.float64).reshape(512, -1)
        ),
    }


_MEMORYVIEW_CASES: dict[str, Callable[[], Any]] = {
    "memoryview-noncontiguous": lambda: memoryview(np.arange(LARGE // 8, dtype=np.float64))[::3],
    "memoryview-noncontiguous-small": lambda: memoryview(np.arange(20.0))[::3],
    "memoryview-0d": lambda: memoryview(np.array(3.5)),
    "memoryview-big-endian": lambda: memoryview(np.arange(LARGE // 8, dtype=">f8")),
    "memoryview-structured": lambda: memoryview(_structured()[["a", "b"]].copy()),
}


def _arrow_cases() -> dict[str, Callable[[], Any]]:
    def table() -> Any:
        import pyarrow as pa

        n = LARGE // 8
        return pa.table(
            {
                "x": np.arange(n),
                "y": _rng().random(n),
                "s": pa.array([f"row{i}" for i in range(n)]),
                "maybe": pa.array([None if i % 7 == 0 else i for i in range(n)]),
            }
        )

    def array() -> Any:
        import pyarrow as pa

        return pa.array(np.arange(LARGE // 8))

    def string_array() -> Any:
        import pyarrow as pa

        return pa.array([f"value {i}" for i in range(LARGE // 16)])

    def record_batch() -> Any:
        return table().to_batches()[0]

    def sliced() -> Any:
        return table().slice(1000, 20_000)

    return {
        "arrow-array": array,
        "arrow-string-array": string_array,
        "arrow-record-batch": record_batch,
        "arrow-table": table,
        "arrow-table-slice": sliced,
    }


def _pandas_cases() -> dict[str, Callable[[], Any]]:
    def frame() -> Any:
        import pandas as pd

        n = LARGE // 8
        return pd.DataFrame(
            {
                "x": np.arange(n),
                "y": _rng().random(n),
                "s": [f"row{i}" for i in range(n)],
                "when": pd.date_range("2020-01-01", periods=n, freq="s"),
            }
        )

    def series() -> Any:
        import pandas as pd

        return pd.Series(_rng().random(LARGE // 8), name="values")

    return {"pandas-frame": frame, "pandas-series": series}


def _torch_cases() -> dict[str, Callable[[], Any]]:
    def t() -> Any:
        import torch

        return torch

    return {
        "torch-float32-large": lambda: t().arange(LARGE // 4, dtype=t().float32),
        "torch-int64-small": lambda: t().arange(10, dtype=t().int64),
        "torch-bfloat16-large": lambda: t().arange(LARGE // 2, dtype=t().float32).to(t().bfloat16),
        "torch-float16": lambda: t().arange(LARGE // 2).to(t().float16),
        "torch-bool": lambda: t().arange(LARGE) % 3 == 0,
        "torch-zero-length": lambda: t().zeros(0, 4),
        "torch-zero-d": lambda: t().tensor(2.5),
        "torch-2d-large": lambda: t().arange(LARGE // 4, dtype=t().float32).reshape(512, -1),
        "torch-non-contiguous": lambda: (
            t().arange(LARGE // 4, dtype=t().float32).reshape(512, -1).T
        ),
        "torch-storage-offset": lambda: t().arange(LARGE // 4 + 100, dtype=t().float32)[100:],
        "torch-requires-grad": lambda: t().ones(LARGE // 4, requires_grad=True),
        "torch-in-dict": lambda: {
            "w": t().arange(LARGE // 8, dtype=t().float64),
            "b": t().zeros(3),
            "n": 1,
        },
    }


_ALL_CASES = {
    **_numpy_cases(),
    **_buffer_cases(),
    **_arrow_cases(),
    **_pandas_cases(),
    **_torch_cases(),
}


def assert_same(got: Any, expected: Any) -> None:
    """Equal values of the same type, dtype and shape (recursively)."""
    assert type(got) is type(expected), (type(got), type(expected))
    if isinstance(expected, np.ndarray):
        assert got.dtype == expected.dtype
        assert got.shape == expected.shape
        if expected.dtype == object:
            assert got.tolist() == expected.tolist()
        else:
            np.testing.assert_array_equal(got, expected)
        return
    if isinstance(expected, memoryview):
        assert (got.format, got.shape, got.itemsize) == (
            expected.format,
            expected.shape,
            expected.itemsize,
        )
        assert got.tobytes() == expected.tobytes()  # tolist() rejects non-native formats
        if len(expected.format.removeprefix("@")) == 1:
            assert got == expected
        return
    if isinstance(expected, dict):
        assert got.keys() == expected.keys()
        for key in expected:
            assert_same(got[key], expected[key])
        return
    if isinstance(expected, list | tuple):
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            assert_same(a, b)
        return
    module = type(expected).__module__.split(".")[0]
    if module == "torch":
        import torch

        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert got.requires_grad == expected.requires_grad
        assert torch.equal(got.detach(), expected.detach())
        return
    if module == "pandas":
        assert got.equals(expected)
        if hasattr(expected, "columns"):
            assert list(got.dtypes) == list(expected.dtypes)
        else:
            assert got.dtype == expected.dtype and got.name == expected.name
        return
    if module == "pyarrow":
        if hasattr(expected, "schema"):
            assert got.schema.equals(expected.schema)
        else:
            assert got.type == expected.type
        assert got.equals(expected)
        return
    assert got == expected


def _case_params() -> list[Any]:
    return [*_ALL_CASES, *_MEMORYVIEW_CASES]


def _make(name: str) -> Any:
    if name in _MEMORYVIEW_CASES:
        return _MEMORYVIEW_CASES[name]()
    return _ALL_CASES[name]()


@pytest.mark.parametrize("case", _case_params())
def test_payload_round_trips_through_a_worker(pool: fj.Pool, case: str) -> None:
    value = _make(case)
    assert_same(roundtrip(pool, value), value)


def test_large_arrays_arrive_as_views_of_a_segment(pool: fj.Pool) -> None:
    big = np.arange(LARGE // 8, dtype=np.float64)
    out = roundtrip(pool, {"big": big, "small": np.arange(5)})
    assert reaches_mmap(out["big"]), "a large array should be a view of a shared segment"
    assert not reaches_mmap(out["small"]), "a small array travels inside the message"
    assert pool.submit(reaches_mmap, big).result(timeout=60), "and so it is in the worker"


def test_the_same_object_twice_in_one_item_stays_one_object(pool: fj.Pool) -> None:
    big = np.arange(LARGE // 8, dtype=np.float64)
    small = np.arange(4)
    out = roundtrip(pool, [big, big, small, small, {"again": big}])
    assert out[0] is out[1] and out[2] is out[3] and out[4]["again"] is out[0]
    np.testing.assert_array_equal(out[0], big)


def test_the_same_tensor_twice_in_one_item_stays_one_object(pool: fj.Pool) -> None:
    import torch

    tensor = torch.arange(LARGE // 4, dtype=torch.float32)
    out = roundtrip(pool, (tensor, tensor))
    assert out[0] is out[1]
    assert torch.equal(out[0], tensor)


# -- 2. zero-copy, writable results and arguments -------------------------------------------------


def test_results_are_writable_zero_copy_views(pool: fj.Pool) -> None:
    out = pool.submit(full_array, 3, 32 * MiB).result(timeout=60)
    assert out.shape == (32 * MiB // 8,) and out.dtype == np.float64
    assert (out == 3).all()
    assert reaches_mmap(out), "the result should view the worker's segment, not a copy"
    assert out.flags.writeable
    out[:1000] = 7.0
    out[-1] = -1.0
    assert out[0] == 7.0 and out[999] == 7.0 and out[1000] == 3.0 and out[-1] == -1.0
    out += 1
    assert out[1000] == 4.0


def test_arguments_are_writable_in_the_worker_and_the_callers_copy_is_untouched(
    pool: fj.Pool,
) -> None:
    a = np.ones(16 * MiB // 8)
    total, writable = pool.submit(add_one_and_sum, a).result(timeout=60)
    assert writable
    assert total == 2.0 * a.size
    assert (a == 1).all(), "the caller's array must not change"
    # the same segment may be reused now: a second task sees the original values, not +1
    assert pool.submit(add_one_and_sum, a).result(timeout=60)[0] == 2.0 * a.size


def test_results_the_caller_keeps_are_not_overwritten_by_later_results(pool1: fj.Pool) -> None:
    # More than the worker remembers (process_worker.MAX_LENT_SEGMENTS) are kept alive.
    first = [pool1.submit(full_array, i, LARGE // 2).result(timeout=60) for i in range(5)]
    fn = functools.partial(full_array, nbytes=LARGE // 2)
    kept = list(pool1.imap(fn, range(100, 180), chunksize=1))
    for i, result in enumerate(first):
        assert (result == i).all(), f"result {i} changed after it was returned"
    for i, result in enumerate(kept, 100):
        assert (result == i).all(), f"result {i} changed after it was returned"


def test_arguments_a_worker_keeps_are_not_overwritten_by_later_arguments(pool1: fj.Pool) -> None:
    first = pool1.submit(keep_argument, np.full(4 * MiB // 8, 5.0)).result(timeout=60)
    assert first == 5.0
    # Many more tasks whose arguments would reuse the kept argument's segment if it were freed.
    sums = pool1.map_list(array_sum, (np.full(4 * MiB // 8, float(i)) for i in range(20)))
    assert sums == [float(i) * (4 * MiB // 8) for i in range(20)]
    kept = pool1.submit(kept_arguments).result(timeout=60)
    assert kept[-1] == (5.0, 5.0)
    pool1.submit(clear_state).result(timeout=60)


# -- 3. segments are reused -----------------------------------------------------------------------


def test_argument_segments_are_reused(pool: fj.Pool) -> None:
    segments = pool._backend._segments
    created, reused = segments.created, segments.reused
    items = (np.full(16 * MiB // 8, float(i)) for i in range(40))
    sums = list(pool.imap(array_sum, items))
    assert sums == [float(i) * (16 * MiB // 8) for i in range(40)]
    made = segments.created - created
    assert made <= 16, f"{made} segments created for 40 tasks"
    assert segments.reused - reused > 20


def test_result_segments_are_reused_in_the_worker(pool1: fj.Pool) -> None:
    _, created, reused = pool1.submit(worker_result_segments).result(timeout=60)
    for i, result in enumerate(pool1.imap(full_array, range(40))):
        assert result[0] == i and result[-1] == i
        del result
    pid, created_after, reused_after = pool1.submit(worker_result_segments).result(timeout=60)
    assert pid in pool1.worker_pids()
    assert created_after - created <= 16, f"{created_after - created} made for 40 results"
    assert reused_after - reused > 20


# -- 4. bytes counted on the shared-memory path ---------------------------------------------------


def test_big_arguments_and_results_are_counted_and_use_segments(pool: fj.Pool) -> None:
    segments = pool._backend._segments
    before = pool.stats()
    used = segments.created + segments.reused
    a = np.ones(16 * MiB // 8)
    assert pool.submit(array_sum, a).result(timeout=60) == a.size
    middle = pool.stats()
    assert middle.bytes_sent - before.bytes_sent >= 16 * MiB
    assert middle.bytes_received - before.bytes_received < MiB, "a float comes back"
    assert segments.created + segments.reused == used + 1, "the argument went in one segment"
    out = pool.submit(full_array, 1).result(timeout=60)
    after = pool.stats()
    assert reaches_mmap(out)
    assert after.bytes_received - middle.bytes_received >= 16 * MiB
    assert after.bytes_sent - middle.bytes_sent < MiB


# -- 5. fj.shared ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["inline", "threads", "process"])
def test_shared_array_gives_correct_results_on_every_backend(backend: str) -> None:
    table = np.arange(64_000, dtype=np.float64) * 0.5
    handle = fj.shared(table)
    results = fj.map(functools.partial(shared_row, handle), range(64), workers=2, backend=backend)
    assert results == [float(table[i * 1000 : (i + 1) * 1000].sum()) for i in range(64)]


def test_shared_array_is_copied_once_not_per_task(pool: fj.Pool) -> None:
    table = np.arange(16 * MiB // 8, dtype=np.float64)
    handle = fj.shared(table)
    before = pool.stats()
    results = pool.map_list(functools.partial(shared_row, handle), range(64), chunksize=1)
    after = pool.stats()
    assert results == [float(table[i * 1000 : (i + 1) * 1000].sum()) for i in range(64)]
    shared = after.bytes_shared - before.bytes_shared
    assert table.nbytes <= shared < 2 * table.nbytes
    sent = after.bytes_sent - before.bytes_sent
    assert sent < table.nbytes // 16, f"{sent} bytes sent for 64 tasks"


def test_shared_array_is_read_only_and_one_object_per_worker(pool: fj.Pool) -> None:
    table = np.arange(LARGE // 8, dtype=np.float64)
    handle = fj.shared(table)
    probes = pool.map_list(functools.partial(probe_shared, handle), range(64), chunksize=1)
    ids_per_pid: dict[int, set[int]] = {}
    for pid, object_id, refused, zero_copy, writeable in probes:
        assert refused, "writing to a shared array in a worker must raise ValueError"
        assert not writeable
        assert zero_copy, "the worker's array should be a view of the shared segment"
        ids_per_pid.setdefault(pid, set()).add(object_id)
    assert os.getpid() not in ids_per_pid
    assert all(len(ids) == 1 for ids in ids_per_pid.values()), ids_per_pid
    assert table[0] == 0.0, "the caller's array is untouched"


def test_shared_handle_pickled_outside_forkjoin_carries_its_object() -> None:
    table = np.arange(LARGE // 8, dtype=np.float64)
    handle = fj.shared(table)
    assert fj.shared(handle) is handle
    copy = pickle.loads(pickle.dumps(handle))
    assert isinstance(copy, fj.Shared)
    np.testing.assert_array_equal(copy.get(), table)
    assert copy.get() is not table


def test_shared_handle_inside_items(pool: fj.Pool) -> None:
    table = np.arange(8 * MiB // 8, dtype=np.float64)
    handle = fj.shared(table)
    before = pool.stats()
    results = pool.map_list(shared_row_item, [(handle, i) for i in range(64)])
    after = pool.stats()
    assert results == [float(table[i * 1000 : (i + 1) * 1000].sum()) for i in range(64)]
    assert after.bytes_sent - before.bytes_sent < table.nbytes // 16
    starmapped = list(pool.map(shared_row, [handle] * 8, range(8)))
    assert starmapped == results[:8]


def test_small_shared_object(pool: fj.Pool) -> None:
    handle = fj.shared({"offset": 10})
    assert pool.map_list(functools.partial(shared_offset, handle), range(5)) == list(range(10, 15))


def test_shared_handle_returned_by_a_task_still_works(pool: fj.Pool) -> None:
    table = np.arange(10.0)
    handle = fj.shared(table)
    back = pool.submit(return_handle, handle).result(timeout=60)
    assert back is handle  # home again: the caller's own handle, not a copy
    np.testing.assert_array_equal(back.get(), table)


def test_shared_handle_made_in_a_task_travels_by_value(pool: fj.Pool) -> None:
    made = pool.submit(make_handle, 5).result(timeout=60)
    np.testing.assert_array_equal(made.get(), np.arange(5.0))


# -- 6. a big array captured by the function ------------------------------------------------------


def test_captured_array_is_sent_once_per_worker_not_per_task(pool: fj.Pool) -> None:
    weights = np.arange(16 * MiB // 8, dtype=np.float64)
    fn = functools.partial(use_weights, weights=weights)
    before = pool.stats()
    results = pool.map_list(fn, range(32), chunksize=1)
    after = pool.stats()
    assert [value for _, _, value, _ in results] == [float(i) for i in range(32)]
    assert all(zero_copy for *_, zero_copy in results)
    sent = after.bytes_sent - before.bytes_sent
    assert sent < weights.nbytes // 16, f"{sent} bytes sent for 32 tasks"
    ids_per_pid: dict[int, set[int]] = {}
    for pid, weights_id, _, _ in results:
        ids_per_pid.setdefault(pid, set()).add(weights_id)
    assert all(len(ids) == 1 for ids in ids_per_pid.values()), (
        f"the function was unpickled more than once per worker: {ids_per_pid}"
    )


# -- 7. initializer with a big argument -----------------------------------------------------------


def test_initializer_receives_a_big_array() -> None:
    table = np.arange(16 * MiB // 8, dtype=np.float64)
    with fj.Pool(2, "process", initializer=store_in_state, initargs=(table,)) as pool:
        results = pool.map_list(read_state, range(0, table.size, table.size // 50))
    assert results == [(float(i), table.size) for i in range(0, table.size, table.size // 50)]


def test_initializer_array_reaches_a_replacement_worker(tmp_path: Path) -> None:
    table = np.arange(16 * MiB // 8, dtype=np.float64)
    counter = str(tmp_path / "calls")
    with fj.Pool(1, "process", initializer=store_in_state, initargs=(table,)) as pool:
        assert pool.submit(state_sum_or_die, counter, 0).result(timeout=60) == table.sum()
        stats = pool.stats()
    assert stats.worker_crashes == 1 and stats.tasks_retried == 1


# -- 8. errors with big payloads ------------------------------------------------------------------


def test_task_error_with_a_big_argument_names_the_item(pool: fj.Pool) -> None:
    items = [np.ones(10), np.ones(10), np.ones(16 * MiB // 8), np.ones(10)]
    with pytest.raises(fj.TaskError) as info:
        pool.map_list(fail_on_big, items, chunksize=1)
    error = info.value
    assert isinstance(error, ValueError)
    assert error.index == 2
    assert "item 2" in str(error) and "too big" in str(error)
    assert len(str(error)) < 2000, "the message must not print the whole array"
    collected = pool.map_list(fail_on_big, items, chunksize=1, on_error="collect")
    assert collected[0] == 10.0 and collected[3] == 10.0
    assert isinstance(collected[2], fj.TaskError)


def test_unpicklable_result_next_to_a_big_array(pool: fj.Pool) -> None:
    results = pool.map_list(unpicklable_on, range(3), chunksize=3, on_error="collect")
    assert isinstance(results[1], fj.SerializationError)
    assert results[1].what == "result" and results[1].index == 1
    assert "lock" in str(results[1]).lower()
    for i in (0, 2):
        assert (results[i]["big"] == i).all()
    with pytest.raises(fj.SerializationError):
        pool.submit(unpicklable_on, 1).result(timeout=60)


def test_result_holding_a_lambda_travels_by_value(pool: fj.Pool) -> None:
    # Not an error: cloudpickle takes over when plain pickle refuses a result.
    result = pool.submit(return_a_lambda, 3).result(timeout=60)
    assert (result["big"] == 3).all() and reaches_mmap(result["big"])
    assert result["fn"](1) == 4


def test_worker_killed_while_holding_a_big_argument_is_retried(
    pool: fj.Pool, tmp_path: Path
) -> None:
    counter = tmp_path / "calls"
    a = np.full(16 * MiB // 8, 2.0)
    before = pool.stats()
    assert pool.submit(kill_first_time, str(counter), a).result(timeout=60) == 2.0 * a.size
    assert len(counter.read_text()) == 2, "killed once, then retried once"
    assert pool.stats().tasks_retried - before.tasks_retried == 1
    assert wait_until(lambda: len(pool.worker_pids()) == 2, 30)
    assert pool.submit(array_sum, a).result(timeout=60) == 2.0 * a.size, "the pool still works"


# -- 9. file descriptors --------------------------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_file_descriptor_leak_in_the_caller() -> None:
    gc.collect()
    before = _open_fds()
    handle = fj.shared(np.arange(LARGE // 8, dtype=np.float64))
    weights = np.ones(LARGE // 8)
    with fj.Pool(2, "process") as pool:
        sums = list(pool.imap(array_sum, (np.full(4 * MiB // 8, 1.0) for _ in range(30))))
        results = pool.map_list(plus_one, [np.zeros(4 * MiB // 8)] * 30)
        shared = pool.map_list(functools.partial(shared_row, handle), range(30))
        captured = pool.map_list(functools.partial(use_weights, weights=weights), range(30))
    assert sums == [4 * MiB // 8] * 30
    assert all((r == 1).all() for r in results)
    assert len(shared) == len(captured) == 30
    kept = results[0]
    del results, handle, pool, captured, shared
    gc.collect()
    assert (kept == 1).all(), "a result outlives its pool and its worker"
    assert wait_until(lambda: _open_fds() <= before + 3, 5), (before, os.listdir("/proc/self/fd"))


# -- 10. memory_limit does not count shared segments ----------------------------------------------


def test_memory_limit_does_not_count_shared_segments() -> None:
    kept = []
    with fj.Pool(1, "process", memory_limit="200MB") as pool:
        # 30 x 16 MiB out and 30 x 16 MiB back, all kept: the worker maps ~500 MB of segments.
        items = (np.full(16 * MiB // 8, float(i)) for i in range(30))
        for i, result in enumerate(pool.imap(plus_one, items, chunksize=1)):
            assert result[0] == i + 1
            kept.append(result)
        stats = pool.stats()
    assert stats.worker_crashes == 0 and stats.tasks_failed == 0
    assert len(stats.workers) == 1, "the worker was never replaced for holding too much"
    assert len(kept) == 30
    assert all(r[-1] == i + 1 for i, r in enumerate(kept))
