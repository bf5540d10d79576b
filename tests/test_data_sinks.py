"""forkjoin.data sinks: atomic per-partition files and a manifest; reruns resume; other plans are
refused; overwrite never deletes the input; and `forkjoin process` killed with SIGKILL resumes to
exactly what an uninterrupted run writes."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import BACKENDS, wait_until

import forkjoin.data as fd
from forkjoin.cli import main
from forkjoin.errors import DataError

pytestmark = pytest.mark.timeout(90)

WORKERS = 2


def frame(n: int, start: int = 0) -> pd.DataFrame:
    ids = np.arange(start, start + n)
    return pd.DataFrame({"id": ids, "k": ids % 5, "s": [f"text {i} Mixed Case" for i in ids]})


def lower(batch: pa.Table) -> pa.Table:
    import pyarrow.compute as pc

    return batch.set_column(2, "s", pc.utf8_lower(batch["s"]))


@pytest.fixture
def source(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    frames = [frame(400, 400 * i) for i in range(4)]
    for i, df in enumerate(frames):
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), src / f"{i}.parquet",
                       row_group_size=100)  # fmt: skip
    return src, pd.concat(frames, ignore_index=True)


def read_back(path, fmt="parquet") -> pd.DataFrame:
    reader = {"parquet": fd.read_parquet, "csv": fd.read_csv, "json": fd.read_json}[fmt]
    return reader(path).to_pandas(backend="inline")


def listing(path) -> list[str]:
    return sorted(os.listdir(path))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
def test_write_then_read_back_equals_pandas(source, tmp_path, backend, fmt):
    src, want = source
    out = tmp_path / "out"
    ds = fd.read_parquet(src, target_bytes=1).map_batches(lower)
    writer = {"parquet": ds.write_parquet, "csv": ds.write_csv, "json": ds.write_json}[fmt]
    stats = writer(str(out), workers=WORKERS, backend=backend)
    assert stats.files_written == 16 and stats.rows_out == len(want)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["complete"] is True and manifest["rows"] == len(want)
    ext = {"parquet": "parquet", "csv": "csv", "json": "jsonl"}[fmt]
    assert [f["name"] for f in manifest["files"]] == [f"part-{i:05d}.{ext}" for i in range(16)]
    assert listing(out) == sorted(["_manifest.json", *(f["name"] for f in manifest["files"])])
    same = want.assign(s=want["s"].str.lower())
    pd.testing.assert_frame_equal(read_back(out, fmt), same, check_dtype=False)


def test_rerun_resumes_and_other_plans_are_refused(source, tmp_path):
    src, want = source
    out = str(tmp_path / "out")
    plan = fd.read_parquet(src, target_bytes=1).map_batches(lower)
    plan.write_parquet(out, backend="threads", workers=WORKERS)
    first = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in listing(out) if "part" in n}
    again = plan.write_parquet(out, backend="threads", workers=WORKERS)
    assert again.partitions_resumed == 16 and again.files_written == 0
    assert {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in first} == first
    with pytest.raises(DataError, match="different plan"):
        fd.read_parquet(src, target_bytes=1).write_parquet(out)
    with pytest.raises(DataError, match="resume=True"):
        plan.write_parquet(out, resume=False)
    other = fd.read_parquet(src, columns=["id"])
    redo = other.write_parquet(out, mode="overwrite", backend="inline")
    parts = other.num_partitions
    assert redo.files_written == parts and listing(out) == ["_manifest.json"] + [
        f"part-{i:05d}.parquet" for i in range(parts)
    ]
    pd.testing.assert_frame_equal(read_back(out), want[["id"]], check_dtype=False)


def test_partial_run_resumes_only_missing_partitions(source, tmp_path):
    src, want = source
    out = tmp_path / "out"
    plan = fd.read_parquet(src, target_bytes=1).map_batches(lower)
    plan.write_parquet(str(out), backend="inline")
    manifest = json.loads((out / "_manifest.json").read_text())
    # As a crash leaves it: 5 partitions recorded, one more renamed into place but not yet
    # recorded, the rest missing, the manifest not complete, staging debris.
    kept = manifest["files"][:5]
    for entry in manifest["files"][6:]:
        os.unlink(out / entry["name"])
    manifest.update(files=kept, complete=False)
    (out / "_manifest.json").write_text(json.dumps(manifest))
    (out / ".part-00007.parquet.dead.123.tmp").write_bytes(b"partial")
    assert fd.read_parquet(out).count() == sum(f["rows"] for f in kept)  # the manifest's files
    stats = plan.write_parquet(str(out), backend="threads", workers=WORKERS)
    assert stats.partitions_resumed == 5 and stats.files_written == 11
    assert not [n for n in listing(out) if n.endswith(".tmp")]
    pd.testing.assert_frame_equal(read_back(out), want.assign(s=want["s"].str.lower()),
                                  check_dtype=False)  # fmt: skip


def test_refuses_to_write_over_its_input_or_into_foreign_directories(source, tmp_path):
    src, _ = source
    out = tmp_path / "out"
    fd.read_parquet(src).write_parquet(str(out), backend="inline")
    with pytest.raises(DataError, match="never deletes the input"):
        fd.read_parquet(out).map_batches(lower).write_parquet(str(out), mode="overwrite")
    with pytest.raises(DataError, match="plan.s own input"):
        fd.read_parquet(src).write_parquet(str(src))
    assert len(fd.read_parquet(out).to_arrow(backend="inline")) == 1600  # untouched
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        fd.read_parquet(src).write_parquet(str(foreign))
    fd.read_parquet(src).write_parquet(str(foreign), mode="overwrite", backend="inline")
    assert (foreign / "notes.txt").read_text() == "mine"  # only part files are ours to delete


def test_failed_partition_leaves_no_partial_file(tmp_path):
    def explode(batch):
        if batch["x"][0].as_py() >= 50:
            raise RuntimeError("boom")
        return batch

    out = tmp_path / "out"
    ds = fd.from_items([{"x": i} for i in range(100)], partitions=4).map_batches(explode)
    with pytest.raises(RuntimeError, match="boom"):
        ds.write_parquet(str(out), backend="threads", workers=WORKERS)
    # A thread cannot be stopped: one still writing a good partition when another failed
    # finishes after the call raised, renaming its file into place (see below). On a busy
    # machine that can take a moment; what must never stay is a temporary file.
    deadline = time.monotonic() + 10
    while [n for n in listing(out) if n.endswith(".tmp")] and time.monotonic() < deadline:
        time.sleep(0.05)
    names = listing(out)
    assert not [n for n in names if n.endswith(".tmp")]
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["complete"] is False
    listed = {f["name"] for f in manifest["files"]}
    # A partition a worker committed after the failure may be on disk and not yet listed: it is
    # complete (renamed into place), a rerun replaces it, and readers go by the manifest.
    assert listed <= {n for n in names if n.startswith("part-")}
    assert fd.read_parquet(out).count() == manifest["rows"] == 25 * len(listed)


# -- the CLI -------------------------------------------------------------------------------------


def test_cli_process_in_process(source, tmp_path, monkeypatch):
    src, want = source
    (tmp_path / "cli_udf.py").write_text(
        "import pyarrow.compute as pc\n"
        "def lower(t):\n    return t.set_column(2, 's', pc.utf8_lower(t['s']))\n"
        "def broken(t):\n    return 42\n"
    )
    monkeypatch.chdir(tmp_path)
    out, err = io.StringIO(), io.StringIO()
    argv = ["process", str(src), "--fn", "cli_udf:lower", "-o", "o", "--workers", "2",
            "--backend", "threads", "--progress"]  # fmt: skip
    assert main(argv, stdout=out, stderr=err) == 0, err.getvalue()
    parts = fd.read_parquet(src).num_partitions
    assert "1,600 rows read" in out.getvalue() and f"{parts} files written" in out.getvalue()
    assert "rows/s" in err.getvalue() and f"{parts}/{parts} partitions" in err.getvalue()
    got = read_back(tmp_path / "o")
    pd.testing.assert_frame_equal(got, want.assign(s=want["s"].str.lower()), check_dtype=False)
    out = io.StringIO()
    assert main(argv, stdout=out, stderr=io.StringIO()) == 0
    assert f"{parts} partitions already committed" in out.getvalue()
    err = io.StringIO()
    bad = ["process", str(src), "--fn", "cli_udf:broken", "-o", "o2", "--backend", "inline"]
    assert main(bad, stdout=io.StringIO(), stderr=err) == 1
    assert "map_batches(broken) returned int" in err.getvalue()
    err = io.StringIO()
    assert main(["process", str(src), "--fn", "cli_udf:nope", "-o", "o3"], stderr=err) == 2
    assert "no attribute 'nope'" in err.getvalue()


SLOW_UDF = textwrap.dedent(
    """
    import time
    import pyarrow.compute as pc

    def slow_lower(t):
        time.sleep(0.05)
        # a comprehension: its code object must not make the plan hash differ between runs
        names = [name for name in t.column_names]
        return t.set_column(names.index("s"), "s", pc.utf8_lower(t["s"]))
    """
)


def _process(args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, "-m", "forkjoin", "process", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # so SIGKILL can take the whole tree, as a crash would
    )


def _committed(out) -> int:
    try:
        return len(json.loads((out / "_manifest.json").read_text())["files"])
    except (FileNotFoundError, ValueError):
        return 0


def test_cli_sigkill_then_rerun_equals_uninterrupted_run(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        df = frame(400, 400 * i)
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), src / f"{i}.parquet",
                       row_group_size=100)  # fmt: skip
    (tmp_path / "slow_udf.py").write_text(SLOW_UDF)
    args = ["--fn", "slow_udf:slow_lower", "--workers", "2", "--partition-mb", "1",
            "--batch-size", "25", "--no-progress"]  # fmt: skip
    # a partition per file (or half a file), batches of 25 rows taking ~80 ms each
    ref = _process([str(src), "-o", "ref", *args], tmp_path)
    _, ref_err = ref.communicate(timeout=60)
    assert ref.returncode == 0, ref_err.decode()

    killed = _process([str(src), "-o", "out", *args], tmp_path)
    out = tmp_path / "out"
    try:
        assert wait_until(lambda: _committed(out) >= 1, 30, 0.01), "no partition committed"
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.communicate(timeout=30)
    committed_before = _committed(out)
    total = len(json.loads((tmp_path / "ref" / "_manifest.json").read_text())["files"])
    assert committed_before < total, "the run finished before it could be killed"
    assert not json.loads((out / "_manifest.json").read_text())["complete"]

    rerun = _process([str(src), "-o", "out", *args], tmp_path)
    stdout, stderr = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, stderr.decode()
    assert f"{committed_before} partitions already committed" in stdout.decode()
    assert listing(out) == listing(tmp_path / "ref")
    for name in listing(out):
        if name.endswith(".parquet"):
            assert pq.read_table(out / name).equals(pq.read_table(tmp_path / "ref" / name))
    ref_manifest = json.loads((tmp_path / "ref" / "_manifest.json").read_text())
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest == ref_manifest


def test_parquet_dictionary_only_where_it_pays(tmp_path):
    """High-cardinality numbers are written plain (a dictionary that pyarrow would build, find
    too big and throw away cost 3x the write: sinks.dictionary_columns); repetitive columns
    keep theirs; the values read back equal."""
    n = 20_000
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"id": np.arange(n), "x": rng.normal(size=n), "category": rng.integers(0, 5, n),
         "name": ["a", "b"] * (n // 2)}
    )  # fmt: skip
    fd.from_pandas(frame, partitions=2).write_parquet(str(tmp_path / "out"), workers=1)
    files = sorted((tmp_path / "out").glob("*.parquet"))
    assert len(files) == 2
    for path in files:
        meta = pq.ParquetFile(path).metadata.row_group(0)
        dictionary = {meta.column(i).path_in_schema: meta.column(i).has_dictionary_page
                      for i in range(meta.num_columns)}  # fmt: skip
        assert dictionary == {"id": False, "x": False, "category": True, "name": True}
    back = pd.concat([pd.read_parquet(p) for p in files], ignore_index=True)
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
