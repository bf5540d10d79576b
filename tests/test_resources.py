"""Resources: slots shaped by resources_per_worker, GPU pinning, fail-fast requests, run_on_devices.

GPUs here are logical (``FORKJOIN_GPUS=0,1``): assignment, pinning and sharing are checked on
machines without one. Workers inherit the caller's environment when they start, so every test
sets the variables (monkeypatch) before its pool starts.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import started_children, wait_until

import forkjoin as fj
from forkjoin.machine import THREAD_CAP_VARIABLES, gpus

# -- tasks (module level: workers import this module to find them) -------------------------------


def _report() -> dict:
    context = fj.worker_context()
    return {
        "pid": os.getpid(),
        "thread": threading.get_ident(),
        "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "device": context.device,
        "gpus": context.gpus,
        "caps": {name: os.environ.get(name) for name in THREAD_CAP_VARIABLES},
    }


def rendezvous(directory: str, count: int, timeout: float = 20.0) -> dict:
    """Wait until ``count`` distinct workers (pid and thread) have arrived, then report where
    this one runs: ``count`` such tasks can only finish when they run on ``count`` workers."""
    Path(directory, f"{os.getpid()}-{threading.get_ident()}").touch()
    deadline = time.monotonic() + timeout
    while len(os.listdir(directory)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(os.listdir(directory))} of {count} workers arrived")
        time.sleep(0.01)
    return _report()


def rendezvous_item(directory: str, count: int, _item: int) -> dict:
    return rendezvous(directory, count)


def record_interval(_item: int, seconds: float = 0.15) -> tuple[str | None, float, float, int]:
    start = time.monotonic()
    time.sleep(seconds)
    return os.environ.get("CUDA_VISIBLE_DEVICES"), start, time.monotonic(), os.getpid()


def sigkill_once_on_gpu(args: tuple[str, str, int]) -> tuple[int, str | None]:
    """On the worker pinned to ``gpu``, the first call (file flag) kills its worker."""
    flag, gpu, item = args
    if os.environ.get("CUDA_VISIBLE_DEVICES") == gpu and not os.path.exists(flag):
        Path(flag).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.05)
    return item, os.environ.get("CUDA_VISIBLE_DEVICES")


def build_mlp(device: str):
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    return model.to(device).eval()


def mlp_forward(model, batch: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor(np.asarray(batch))).numpy()


def setup_recording(path: str, expected: int, device: str) -> dict:
    """setup(device): note this worker in ``path``; returns its state."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return {"device": device, "expected": expected, "setups": path}


def teardown_recording(path: str, state: dict) -> None:
    with open(path, "a") as f:
        f.write(f"{os.getpid()} {state['device']}\n")


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def rows_where(state: dict, batch) -> list[tuple]:
    """Per row: where it ran. Waits until every expected worker has set up, so that the batches
    spread over all of them."""
    wait_until(lambda: len(_lines(Path(state["setups"]))) >= state["expected"], 20)
    time.sleep(0.01)
    context = fj.worker_context()
    here = (os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES"), state["device"], context.gpus)
    return [(row, *here) for row in batch]


def fail_on_row(bad: int, state: dict, batch) -> list[int]:
    if bad in list(batch):
        raise ValueError(f"row {bad} is bad")
    time.sleep(0.01)
    return list(batch)


def double_rows(batch) -> list[int]:
    return [2 * x for x in batch]


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORKJOIN_GPUS", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two logical GPUs, 0 and 1, all visible; thread caps left to forkjoin."""
    monkeypatch.setenv("FORKJOIN_GPUS", "0,1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for name in THREAD_CAP_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _meet(pool: fj.Pool, count: int, directory: Path) -> list[dict]:
    """Run ``count`` rendezvous tasks at once on ``pool``: one report per worker."""
    directory.mkdir()
    futures = [pool.submit(rendezvous, str(directory), count) for _ in range(count)]
    return [future.result(timeout=60) for future in futures]


# -- 1. what the machine has ---------------------------------------------------------------------


def test_devices_here_reports_usable_cpus_and_no_gpu(no_gpus: None) -> None:
    info = fj.devices()
    assert info.cpus == len(os.sched_getaffinity(0))
    if shutil.which("nvidia-smi") is None:
        assert info.gpus == []
        assert gpus() == []


def test_logical_gpus_are_narrowed_by_cuda_visible_devices(
    monkeypatch: pytest.MonkeyPatch, two_gpus: None
) -> None:
    assert [gpu.index for gpu in fj.devices().gpus] == [0, 1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert [gpu.index for gpu in fj.devices().gpus] == [1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert fj.devices().gpus == []


@pytest.mark.parametrize("spec", ["0,x", "gpu0", "0;1", "-1"])
def test_malformed_logical_gpus_are_refused(monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    monkeypatch.setenv("FORKJOIN_GPUS", spec)
    with pytest.raises(ValueError, match="FORKJOIN_GPUS"):
        fj.devices()


# -- 2. and 3. pinning ---------------------------------------------------------------------------


def test_one_gpu_per_worker_pins_each_process_worker(two_gpus: None, tmp_path: Path) -> None:
    with fj.Pool(resources_per_worker={"gpu": 1}, backend="process") as pool:
        assert pool.workers == 2
        reports = _meet(pool, 2, tmp_path / "meet")
    assert len({r["pid"] for r in reports}) == 2
    assert sorted(r["cuda_visible"] for r in reports) == ["0", "1"]
    for report in reports:
        assert report["device"] == "cuda:0", "a pinned worker's first GPU is cuda:0"
        assert report["gpus"] == (int(report["cuda_visible"]),)
        assert "," not in report["cuda_visible"]


def test_one_gpu_per_worker_on_threads_names_the_callers_devices(
    two_gpus: None, tmp_path: Path
) -> None:
    with fj.Pool(resources_per_worker={"gpu": 1}, backend="threads") as pool:
        assert pool.workers == 2
        reports = _meet(pool, 2, tmp_path / "meet")
    assert sorted(r["device"] for r in reports) == ["cuda:0", "cuda:1"]
    assert sorted(r["gpus"] for r in reports) == [(0,), (1,)]
    for report in reports:
        assert report["device"] == f"cuda:{report['gpus'][0]}"
        assert report["cuda_visible"] is None, "threads cannot be pinned"


def test_threads_number_devices_as_the_caller_sees_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The caller sees only GPUs 2 and 3 (of 0-3): in its own process they are cuda:0, cuda:1."""
    monkeypatch.setenv("FORKJOIN_GPUS", "0,1,2,3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    with fj.Pool(resources_per_worker={"gpu": 1}, backend="threads") as pool:
        reports = _meet(pool, 2, tmp_path / "meet")
    assert sorted((r["gpus"], r["device"]) for r in reports) == [
        ((2,), "cuda:0"),
        ((3,), "cuda:1"),
    ]


def test_half_a_gpu_per_worker_puts_two_workers_on_each_gpu(two_gpus: None, tmp_path: Path) -> None:
    with fj.Pool(resources_per_worker={"gpu": 0.5}, backend="process") as pool:
        assert pool.workers == 4
        reports = _meet(pool, 4, tmp_path / "meet")
    assert len({r["pid"] for r in reports}) == 4
    assert Counter(r["cuda_visible"] for r in reports) == {"0": 2, "1": 2}
    assert {r["device"] for r in reports} == {"cuda:0"}
    assert all(r["gpus"] == (int(r["cuda_visible"]),) for r in reports)


def test_two_gpus_per_worker_pins_both(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FORKJOIN_GPUS", "0,1,2,3")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with fj.Pool(resources_per_worker={"gpu": 2}, backend="process") as pool:
        assert pool.workers == 2
        reports = _meet(pool, 2, tmp_path / "meet")
    assert sorted(r["cuda_visible"] for r in reports) == ["0,1", "2,3"]
    assert sorted(r["gpus"] for r in reports) == [(0, 1), (2, 3)]
    assert {r["device"] for r in reports} == {"cuda:0"}


# -- 4. assignment respects resources ------------------------------------------------------------


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals running at one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, step in events:  # at a tie an end (-1) sorts before a start (+1): touching is fine
        running += step
        most = max(most, running)
    return most


def _by_gpu(results: list[tuple[str | None, float, float, int]]) -> dict[str, list]:
    grouped: dict[str, list] = {}
    for gpu, start, end, _pid in results:
        assert gpu in ("0", "1"), f"a task ran on {gpu!r}, not on one GPU"
        grouped.setdefault(gpu, []).append((start, end))
    return grouped


@pytest.mark.parametrize(("per_task", "per_gpu"), [(1, 1), (0.5, 2)])
def test_tasks_on_one_gpu_never_exceed_it(
    two_gpus: None, tmp_path: Path, per_task: float, per_gpu: int
) -> None:
    options = {"resources": {"gpu": per_task}, "chunksize": 1, "backend": "process"}
    # Warm the shared pool (the same shape reuses it): every worker is up when timing starts.
    workers = 2 * per_gpu
    meet = functools.partial(rendezvous_item, str(tmp_path / "meet"), workers)
    (tmp_path / "meet").mkdir()
    warm = fj.map(meet, range(workers), **options)
    results = fj.map(record_interval, range(8 * per_gpu), **options)
    assert {pid for *_, pid in results} <= {r["pid"] for r in warm}, "the pool was reused"
    grouped = _by_gpu(results)
    assert set(grouped) == {"0", "1"}, "both GPUs' workers took tasks"
    for gpu, intervals in grouped.items():
        assert _max_overlap(intervals) == per_gpu, (gpu, sorted(intervals))
    pids_per_gpu = {gpu: {pid for g, *_, pid in results if g == gpu} for gpu in grouped}
    assert all(len(pids) <= per_gpu for pids in pids_per_gpu.values()), pids_per_gpu


# -- 5. a replacement worker takes its slot's GPU ------------------------------------------------


def test_replacement_worker_keeps_the_dead_workers_gpu(two_gpus: None, tmp_path: Path) -> None:
    flag = tmp_path / "killed"
    with fj.Pool(resources_per_worker={"gpu": 1}, backend="process", retries=1) as pool:
        before = {r["cuda_visible"]: r["pid"] for r in _meet(pool, 2, tmp_path / "meet")}
        assert set(before) == {"0", "1"}
        results = pool.map_list(
            sigkill_once_on_gpu, [(str(flag), "1", i) for i in range(8)], chunksize=1
        )
        assert [item for item, _ in results] == list(range(8))
        assert flag.exists(), "the worker on GPU 1 ran a task and died"
        assert pool.stats().worker_crashes == 1
        # a replacement is up (what each worker's environment says is read from inside it
        # below: a forked worker's /proc/<pid>/environ is its zygote's, not what it runs with)
        assert wait_until(lambda: len(pool.worker_pids()) == 2, 20), pool.worker_pids()
        assert before["1"] not in pool.worker_pids()
        after = {r["cuda_visible"]: r for r in _meet(pool, 2, tmp_path / "meet-again")}
    assert set(after) == {"0", "1"}
    assert after["1"]["pid"] != before["1"]
    assert after["1"]["gpus"] == (1,) and after["1"]["device"] == "cuda:0"
    assert after["0"]["pid"] == before["0"]


# -- 6. impossible requests fail at once ---------------------------------------------------------


IMPOSSIBLE = {
    "more gpus than exist": (lambda: fj.Pool(resources_per_worker={"gpu": 3}), "gpus=2"),
    "more gpus than exist, fj.map": (
        lambda: fj.map(abs, [1], resources={"gpu": 3}, backend="process"),
        "gpus=2",
    ),
    "three workers of one gpu on two": (
        lambda: fj.Pool(3, "process", resources_per_worker={"gpu": 1}),
        "gpus=2",
    ),
    "three workers of one gpu on two, fj.map": (
        lambda: fj.map(abs, [1], workers=3, resources={"gpu": 1}, backend="process"),
        "at most 2 fit",
    ),
    "unknown resource": (lambda: fj.Pool(resources_per_worker={"tpu": 1}), "unknown"),
    "a fraction above one gpu": (
        lambda: fj.Pool(resources_per_worker={"gpu": 1.5}, backend="process"),
        "whole number",
    ),
    "negative": (lambda: fj.Pool(resources_per_worker={"gpu": -1}), "negative"),
}


@pytest.mark.parametrize("case", IMPOSSIBLE)
def test_impossible_request_fails_fast(two_gpus: None, case: str) -> None:
    call, message = IMPOSSIBLE[case]
    start = time.monotonic()
    with pytest.raises(fj.ResourceError, match=message):
        call()
    assert time.monotonic() - start < 0.5
    assert started_children() == [], "no worker was started"


def test_task_request_larger_than_the_pools_slot_fails_fast(two_gpus: None) -> None:
    with fj.Pool(resources_per_worker={"gpu": 1}, backend="process") as pool:
        start = time.monotonic()
        with pytest.raises(fj.ResourceError, match="gpu=1"):
            pool.map_list(abs, [1, 2], resources={"gpu": 2})
        with pytest.raises(fj.ResourceError, match="gpus=2"):
            pool.map_list(abs, [1, 2], resources={"gpu": 3})
        assert time.monotonic() - start < 0.5
        assert pool.worker_pids() == []
        assert pool.map_list(abs, [-1, 2], resources={"gpu": 0.5}) == [1, 2]


def test_pool_default_request_larger_than_its_slot_fails_fast(two_gpus: None) -> None:
    from forkjoin.backends import process

    before = set(process._live_backends)
    start = time.monotonic()
    try:
        with pytest.raises(fj.ResourceError, match="gpu=1"):
            fj.Pool(resources={"gpu": 2}, resources_per_worker={"gpu": 1}, backend="process")
        assert time.monotonic() - start < 0.5
        assert started_children() == [], "no worker was started"
        leaked = set(process._live_backends) - before
        assert not leaked, "the refused pool's backend is still live"
    finally:
        for backend in set(process._live_backends) - before:  # keep the leak check quiet
            backend.shutdown(wait=True)


# -- 7. thread caps follow cpu -------------------------------------------------------------------


def test_thread_caps_follow_the_cpus_per_worker(two_gpus: None, tmp_path: Path) -> None:
    # One worker alone would get every core (2 here) without resources_per_worker.
    with fj.Pool(1, "process", resources_per_worker={"cpu": 1}) as pool:
        (report,) = _meet(pool, 1, tmp_path / "one")
    assert report["caps"] == dict.fromkeys(THREAD_CAP_VARIABLES, "1")
    with fj.Pool(2, "process", resources_per_worker={"cpu": 1}) as pool:
        reports = _meet(pool, 2, tmp_path / "two")
    assert all(r["caps"] == dict.fromkeys(THREAD_CAP_VARIABLES, "1") for r in reports)
    assert all(r["cuda_visible"] is None for r in reports), "no GPU asked: none pinned"


def test_a_thread_cap_the_user_set_wins(
    monkeypatch: pytest.MonkeyPatch, two_gpus: None, tmp_path: Path
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with fj.Pool(2, "process", resources_per_worker={"cpu": 1}) as pool:
        reports = _meet(pool, 2, tmp_path / "meet")
    for report in reports:
        assert report["caps"]["OMP_NUM_THREADS"] == "3"
        assert report["caps"]["OPENBLAS_NUM_THREADS"] == "1"


# -- 8. run_on_devices ---------------------------------------------------------------------------


def test_run_on_devices_cpu_inference_matches_a_plain_loop(no_gpus: None) -> None:
    data = np.random.default_rng(0).standard_normal((5000, 16)).astype(np.float32)
    out = fj.run_on_devices(mlp_forward, data, batch_size=512, setup=build_mlp, workers=2)
    model = build_mlp("cpu")
    expected = np.concatenate(
        [mlp_forward(model, data[i : i + 512]) for i in range(0, len(data), 512)]
    )
    assert isinstance(out, np.ndarray)
    assert out.shape == (5000, 4) == expected.shape
    assert np.allclose(out, expected, atol=1e-6)


def test_run_on_devices_sets_up_once_per_worker(no_gpus: None, tmp_path: Path) -> None:
    setups, teardowns = tmp_path / "setups", tmp_path / "teardowns"
    out = fj.run_on_devices(
        rows_where,
        list(range(300)),
        batch_size=10,
        setup=functools.partial(setup_recording, str(setups), 2),
        teardown=functools.partial(teardown_recording, str(teardowns)),
        workers=2,
    )
    assert [row for row, *_ in out] == list(range(300))
    used = {pid for _, pid, *_ in out}
    setup_pids = _lines(setups)
    assert len(setup_pids) == len(set(setup_pids)) == len(used) == 2
    assert {str(pid) for pid in used} == set(setup_pids)
    assert {device for *_, device, _ in out} == {"cpu"}
    assert sorted(_lines(teardowns)) == sorted(f"{pid} cpu" for pid in setup_pids)


def _fail_on_row_137(setups: Path, teardowns: Path) -> None:
    start = time.monotonic()
    with pytest.raises(fj.TaskError, match="row 137 is bad") as info:
        fj.run_on_devices(
            functools.partial(fail_on_row, 137),
            np.arange(1000),
            batch_size=50,
            setup=functools.partial(setup_recording, str(setups), 2),
            teardown=functools.partial(teardown_recording, str(teardowns)),
            workers=2,
        )
    assert isinstance(info.value, ValueError)
    assert time.monotonic() - start < 20, "the error stopped the call, not the end of the data"


def test_run_on_devices_raises_the_tasks_error(no_gpus: None, tmp_path: Path) -> None:
    _fail_on_row_137(tmp_path / "setups", tmp_path / "teardowns")
    assert _lines(tmp_path / "setups"), "at least one worker set up"


def test_run_on_devices_releases_each_worker_on_error(no_gpus: None, tmp_path: Path) -> None:
    setups, teardowns = tmp_path / "setups", tmp_path / "teardowns"
    _fail_on_row_137(setups, teardowns)
    setup_pids = _lines(setups)
    assert setup_pids, "at least one worker set up"
    assert sorted(_lines(teardowns)) == sorted(f"{pid} cpu" for pid in setup_pids)


def test_run_on_devices_uses_every_gpu(two_gpus: None, tmp_path: Path) -> None:
    setups = tmp_path / "setups"
    out = fj.run_on_devices(
        rows_where,
        list(range(60)),
        batch_size=5,
        setup=functools.partial(setup_recording, str(setups), 2),
    )
    assert [row for row, *_ in out] == list(range(60)), "merge='auto' flattens the lists"
    where = {(pid, visible, device, owned) for _, pid, visible, device, owned in out}
    assert len(_lines(setups)) == 2
    assert sorted((visible, device, owned) for _, visible, device, owned in where) == [
        ("0", "cuda:0", (0,)),
        ("1", "cuda:0", (1,)),
    ]


def test_run_on_devices_on_chosen_gpus_or_cpu(two_gpus: None, tmp_path: Path) -> None:
    chosen = fj.run_on_devices(
        rows_where,
        list(range(20)),
        batch_size=5,
        devices=[1],
        setup=functools.partial(setup_recording, str(tmp_path / "one"), 1),
    )
    assert {tuple(row[2:]) for row in chosen} == {("1", "cuda:0", (1,))}
    on_cpu = fj.run_on_devices(
        rows_where,
        list(range(20)),
        batch_size=5,
        devices="cpu",
        workers=1,
        setup=functools.partial(setup_recording, str(tmp_path / "cpu"), 1),
    )
    assert [row[0] for row in on_cpu] == list(range(20))
    assert {tuple(row[2:]) for row in on_cpu} == {(None, "cpu", ())}


def test_run_on_devices_batches_a_generator(no_gpus: None) -> None:
    per_batch = fj.run_on_devices(
        double_rows, (x for x in range(23)), batch_size=5, merge="list", workers=1
    )
    assert per_batch == [[0, 2, 4, 6, 8], [10, 12, 14, 16, 18], [20, 22, 24, 26, 28],
                         [30, 32, 34, 36, 38], [40, 42, 44]]  # fmt: skip
    flat = fj.run_on_devices(double_rows, (x for x in range(23)), batch_size=5, workers=1)
    assert flat == [2 * x for x in range(23)]


def test_run_on_devices_refuses_an_empty_batch_size(no_gpus: None) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        fj.run_on_devices(double_rows, [1, 2, 3], batch_size=0, workers=1)
