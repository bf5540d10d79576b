"""Faults during an exchange (RELIABILITY.md row 38): a worker SIGKILLed on the map side or the
reduce side, disk full while spilling, the caller SIGKILLed mid-exchange and a resume; and the
bounded-memory run (data 4x a worker's memory_limit). Every row exactly once, clear errors,
no spill file left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import forkjoin as fj
from forkjoin.data import spill  # noqa: E402

pytestmark = pytest.mark.timeout(150)


@pytest.fixture
def spill_root(spill_root, monkeypatch):  # type: ignore[no-untyped-def]
    """conftest's spill directory, with every exchange going through disk."""
    monkeypatch.setenv("FORKJOIN_SPILL_THRESHOLD", "0")
    return spill_root


def write_source(folder: Any, rows: int = 2000, files: int = 4) -> Any:
    folder.mkdir()
    per = rows // files
    for i in range(files):
        n = np.arange(i * per, (i + 1) * per)
        table = pa.table({"k": n % 37, "x": (n * 7919) % 1000 / 10.0, "n": n})
        pq.write_table(table, folder / f"part-{i}.parquet")
    return folder


class KillOnce:
    """Kills its own worker (SIGKILL) the first time it meets ``trigger``; logs every call to
    ``log`` (one line per batch: its first n) so a test sees what ran twice."""

    def __init__(self, marker: str, log: str, column: str, trigger: int) -> None:
        self.marker, self.log, self.column, self.trigger = marker, log, column, trigger

    def __call__(self, batch: Any) -> Any:
        values = batch[self.column].tolist()
        with open(self.log, "a") as handle:
            handle.write(f"{values[0] if values else ''}\n")
        if self.trigger in values:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return batch
            os.kill(os.getpid(), signal.SIGKILL)
        return batch


def test_worker_killed_on_the_map_side_recomputes_one_partition(spill_root, tmp_path):
    source = write_source(tmp_path / "src")
    log = tmp_path / "calls.log"
    kill = KillOnce(str(tmp_path / "killed"), str(log), "n", trigger=700)
    left = fj.data.read_parquet(str(source)).map_batches(
        kill, batch_size=None, batch_format="pandas"
    )
    right = fj.data.from_pandas(pd.DataFrame({"k": range(0, 37, 2), "tag": range(19)}))
    got = left.join(right, on="k", broadcast=False).to_pandas(workers=2, backend="process")
    assert (tmp_path / "killed").exists()  # the kill happened
    frame = pq.read_table(source).to_pandas()
    expected = frame[frame.k % 2 == 0]
    assert sorted(got.n) == sorted(expected.n)  # every row exactly once
    calls = log.read_text().split()
    assert calls.count("500") == 2  # the partition holding n=700 (rows 500-999) ran again
    assert len(calls) == 4 + 1  # ... and only it: not the whole job


def test_worker_killed_on_the_reduce_side_loses_no_row(spill_root, tmp_path):
    source = write_source(tmp_path / "src")
    log = tmp_path / "calls.log"
    kill = KillOnce(str(tmp_path / "killed"), str(log), "k", trigger=11)

    def count_group(group: Any) -> Any:
        kill(group)
        return pd.DataFrame({"k": [group.k.iloc[0]], "rows": [len(group)], "s": [group.n.sum()]})

    got = (
        fj.data.read_parquet(str(source))
        .groupby("k")
        .map_groups(count_group)
        .to_pandas(workers=2, backend="process")
    )
    assert (tmp_path / "killed").exists()
    frame = pq.read_table(source).to_pandas()
    expected = frame.groupby("k").agg(rows=("n", "size"), s=("n", "sum")).reset_index()
    assert got.values.tolist() == expected.values.tolist()


def test_disk_full_while_spilling_is_a_data_error_naming_the_directory(tmp_path, monkeypatch):
    """A real full filesystem: a 1 MiB tmpfs (needs root to mount; skipped otherwise)."""
    full = tmp_path / "tiny"
    full.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(full)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        monkeypatch.setenv(spill.SPILL_DIR_ENV, str(full))
        monkeypatch.setenv("FORKJOIN_SPILL_THRESHOLD", "0")
        source = write_source(tmp_path / "src", rows=200_000, files=2)  # ~5 MB to spill
        out = tmp_path / "out"
        with pytest.raises(fj.errors.DataError) as info:
            fj.data.read_parquet(str(source)).sort("x").write_parquet(str(out), workers=2)
        message = str(info.value)
        assert str(full) in message and "no space left" in message and "bytes to write" in message
        assert os.listdir(full) == []  # no spill file, not even a staging one
        visible = [n for n in os.listdir(out) if n.startswith("part-")] if out.exists() else []
        assert visible == []  # nothing half-written in the output
    finally:
        subprocess.run(["umount", str(full)], check=True)


CALLER = textwrap.dedent(
    """
    import sys, time
    import forkjoin as fj

    def slow(batch):
        time.sleep(0.4)
        return batch

    source, out = sys.argv[1], sys.argv[2]
    ds = fj.data.read_parquet(source).sort(["k", "x"]).map_batches(slow, batch_size=None)
    ds.write_parquet(out, workers=2)
    """
)


def test_caller_killed_mid_exchange_then_resume_gives_identical_output(spill_root, tmp_path):
    source = write_source(tmp_path / "src", rows=8000, files=8)
    script = tmp_path / "caller.py"
    script.write_text(CALLER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    reference = tmp_path / "reference"
    subprocess.run(
        [sys.executable, str(script), str(source), str(reference)], env=env, check=True, timeout=90
    )
    out = tmp_path / "out"
    caller = subprocess.Popen([sys.executable, str(script), str(source), str(out)], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until some buckets are committed, not all
        if any(n.startswith("part-") for n in (os.listdir(out) if out.exists() else [])):
            break
        time.sleep(0.05)
    caller.send_signal(signal.SIGKILL)
    caller.wait(timeout=10)
    stale = os.listdir(spill_root)
    assert len(stale) == 1 and stale[0].startswith(spill.SPILL_PREFIX)  # left by the dead caller
    resumed = subprocess.run(
        [sys.executable, str(script), str(source), str(out)], env=env, timeout=90
    )
    assert resumed.returncode == 0
    names = sorted(n for n in os.listdir(reference) if n.startswith("part-"))
    assert names == sorted(n for n in os.listdir(out) if n.startswith("part-"))
    for name in names:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert os.listdir(spill_root) == []  # the next run cleaned the dead caller's directory


# -- bounded memory ------------------------------------------------------------------------------


def write_payload(folder: Any, megabytes: int) -> int:
    """Parquet of ~``megabytes`` of Arrow data (a float key and 240 random bytes per row)."""
    folder.mkdir()
    rows_per_file = 100_000  # ~25 MB in memory
    files = max(1, megabytes // 25)
    rng = np.random.default_rng(0)
    for i in range(files):
        payload = rng.integers(0, 255, size=(rows_per_file, 240), dtype=np.uint8)
        table = pa.table(
            {
                "key": rng.random(rows_per_file),
                "payload": pa.FixedSizeBinaryArray.from_buffers(
                    pa.binary(240), rows_per_file, [None, pa.py_buffer(payload.tobytes())]
                ),
            }
        )
        pq.write_table(
            table, folder / f"part-{i:03d}.parquet", compression="none", row_group_size=50_000
        )
    return files * rows_per_file


def summary(batch: Any) -> Any:
    keys = batch.column("key").to_numpy()
    ordered = bool(np.all(keys[1:] >= keys[:-1]))
    return {"rows": [len(keys)], "lo": [keys.min()], "hi": [keys.max()], "ordered": [ordered]}


def peak_tree_rss(stop: threading.Event, peak: list[int]) -> None:
    import psutil

    me = psutil.Process()
    while not stop.is_set():
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        peak[0] = max(peak[0], total)
        time.sleep(0.05)


def sort_with_limit(source: Any, limit: str) -> tuple[Any, int]:
    peak = [0]
    stop = threading.Event()
    watcher = threading.Thread(target=peak_tree_rss, args=(stop, peak))
    watcher.start()
    try:
        with fj.Pool(workers=2, memory_limit=limit) as pool:
            ds = fj.data.read_parquet(str(source), target_bytes=8 << 20).sort("key")
            parts = ds.map_batches(summary, batch_size=None).to_pandas(pool=pool)
    finally:
        stop.set()
        watcher.join()
    return parts, peak[0]


@pytest.mark.slow
def test_sort_of_four_times_a_workers_memory_limit_finishes_with_flat_memory(
    spill_root, tmp_path, monkeypatch
):
    monkeypatch.setattr("forkjoin.data.exchange.TARGET_BUCKET_BYTES", 8 << 20)
    limit_mb = 200  # ~145 MB of it is the worker's Python, pyarrow and pandas
    small_rows = write_payload(tmp_path / "small", limit_mb)
    big_rows = write_payload(tmp_path / "big", 4 * limit_mb)
    small, small_peak = sort_with_limit(tmp_path / "small", f"{limit_mb}MB")
    big, big_peak = sort_with_limit(tmp_path / "big", f"{limit_mb}MB")
    for parts, rows in ((small, small_rows), (big, big_rows)):
        assert parts.rows.sum() == rows and parts.ordered.all()
        nonempty = parts[parts.rows > 0]
        assert (nonempty.lo.to_numpy()[1:] >= nonempty.hi.to_numpy()[:-1]).all()  # in order
    # Memory stays flat: 4x the data, not 4x the peak (the caller, 2 workers, page cache aside).
    print(f"peak RSS of the process tree: {small_peak >> 20} MB (1x), {big_peak >> 20} MB (4x)")
    assert big_peak < 1.4 * small_peak, (small_peak >> 20, big_peak >> 20)


# -- the cluster engines -------------------------------------------------------------------------


def enrich(batch: Any) -> Any:
    return batch.append_column("x2", pa.compute.multiply(batch.column("x"), 2))


def group_sizes(group: Any) -> Any:
    return pd.DataFrame({"k": [group.k.iloc[0]], "rows": [len(group)], "first": [group.n.iloc[0]]})


@pytest.mark.cluster
@pytest.mark.parametrize("engine", ["ray", "dask"])
@pytest.mark.parametrize("spilled", [False, True])
def test_exchanges_on_a_cluster_engine_match_local_processes(
    engine, spilled, tmp_path, request, monkeypatch
):
    """On Ray and Dask the small exchange moves buckets through the engine (its object store
    or its result path); the large one through a spill directory the workers share (here a
    local one: the cluster runs on this machine)."""
    pool = request.getfixturevalue(f"{engine}_cluster")
    root = tmp_path / "spill"
    root.mkdir()
    monkeypatch.setenv(spill.SPILL_DIR_ENV, str(root))
    if spilled:
        monkeypatch.setenv("FORKJOIN_SPILL_THRESHOLD", "0")
    source = write_source(tmp_path / "src", rows=3000, files=3)
    base = fj.data.read_parquet(str(source)).map_batches(enrich)
    right = fj.data.from_pandas(pd.DataFrame({"k": range(0, 37, 3), "tag": range(13)}))

    def pipelines() -> dict[str, Any]:
        return {
            "join": base.join(right, on="k", how="left", broadcast=False),
            "broadcast": base.join(right, on="k", how="inner"),
            "sort": base.sort(["x", "n"], descending=[True, False]),
            "groups": base.groupby("k").map_groups(group_sizes),
            "shuffle": base.random_shuffle(seed=5),
        }

    local = {name: ds.to_pandas(workers=2, backend="process") for name, ds in pipelines().items()}
    remote = {name: ds.to_pandas(pool=pool) for name, ds in pipelines().items()}
    for name in ("sort", "groups", "shuffle"):  # defined order: identical
        assert remote[name].values.tolist() == local[name].values.tolist(), name
    for name in ("join", "broadcast"):  # join order is not defined: the same rows
        key = ["n", "k"]
        pd.testing.assert_frame_equal(
            remote[name].sort_values(key).reset_index(drop=True),
            local[name].sort_values(key).reset_index(drop=True),
        )
    out = tmp_path / "out"
    pipelines()["sort"].write_parquet(str(out), pool=pool)
    assert pq.read_table(out).to_pandas().values.tolist() == local["sort"].values.tolist()
    assert os.listdir(root) == []
