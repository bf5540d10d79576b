"""The sink's commit protocol through fsspec (storage.py), on the filesystems that run here:
fsspec's memory and local filesystems, and a memory filesystem whose rename refuses to overwrite,
as HDFS's does. A real HDFS cannot run on these machines (no NameNode package installs): what is
tested for hdfs:// is that an unreachable NameNode fails at once with a clear error."""

from __future__ import annotations

import json
import socket
import time

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFileSystem  # noqa: E402

import forkjoin as fj  # noqa: E402
from forkjoin.data.storage import FsspecStorage  # noqa: E402
from forkjoin.errors import DataError  # noqa: E402

pytestmark = pytest.mark.timeout(120)


class NoOverwriteFileSystem(MemoryFileSystem):
    """A memory filesystem with HDFS's rename rule: the destination must not exist."""

    protocol = "nooverwrite"
    renames: list[tuple[str, str]] = []

    @classmethod
    def _strip_protocol(cls, path):  # type: ignore[no-untyped-def,override]
        return MemoryFileSystem._strip_protocol(str(path).removeprefix("nooverwrite://"))

    def mv(self, path1, path2, **kwargs):  # type: ignore[no-untyped-def,override]
        if self.exists(path2):
            raise FileExistsError(f"rename {path1} -> {path2}: destination exists")
        type(self).renames.append((path1, path2))
        return super().mv(path1, path2, **kwargs)


fsspec.register_implementation("nooverwrite", NoOverwriteFileSystem, clobber=True)


def double(batch):  # type: ignore[no-untyped-def]
    import pyarrow.compute as pc

    return batch.append_column("y", pc.multiply(batch.column("x"), 2))


def dataset():  # type: ignore[no-untyped-def]
    return fj.data.from_items([{"x": i} for i in range(60)], partitions=3).map_batches(double)


def expected() -> list[int]:
    return [2 * i for i in range(60)]


def read_back(url: str) -> list[int]:
    table = fj.data.read_parquet(url).to_arrow(backend="inline")
    return sorted(table.column("y").to_pylist())


@pytest.fixture
def memory_root():  # type: ignore[no-untyped-def]
    fs = fsspec.filesystem("memory")
    root = f"/fj-{time.monotonic_ns()}"
    yield root
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_write_parquet_to_a_memory_filesystem(memory_root):
    url = f"memory://{memory_root}/out"
    stats = dataset().write_parquet(url, backend="threads", workers=2)
    fs = fsspec.filesystem("memory")
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{memory_root}/out", detail=False))
    assert names == ["_manifest.json", "part-00000.parquet", "part-00001.parquet",
                     "part-00002.parquet"]  # fmt: skip
    manifest = json.loads(fs.cat(f"{memory_root}/out/_manifest.json"))
    assert manifest["complete"] is True and manifest["rows"] == 60
    assert read_back(url) == expected()
    assert stats is not None


def test_commit_never_renames_over_a_file(memory_root):
    """The first write, and a rerun over a crashed run's leftovers (an unlisted final file
    with other contents, a staging file), on a filesystem whose rename cannot overwrite."""
    url = f"nooverwrite://{memory_root}/out"
    fs = fsspec.filesystem("nooverwrite")
    fs.makedirs(f"{memory_root}/out", exist_ok=True)
    # a crashed run: partition 1 renamed into place but never listed, a staging file left
    pq.write_table(pa.table({"x": [999]}), fs.open(f"{memory_root}/out/part-00001.parquet", "wb"))
    with fs.open(f"{memory_root}/out/.part-00002.parquet.dead.1.tmp", "wb") as handle:
        handle.write(b"half")
    with fs.open(f"{memory_root}/out/_manifest.json", "w") as handle:
        json.dump({"version": 1, "format": "parquet", "plan_hash": None, "complete": False,
                   "files": []}, handle)  # fmt: skip
    NoOverwriteFileSystem.renames.clear()
    dataset().write_parquet(url, backend="threads", workers=2, mode="overwrite")
    finals = [dst.rsplit("/", 1)[-1] for _, dst in NoOverwriteFileSystem.renames]
    assert sorted(n for n in finals if n.startswith("part-")) == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"
    ]  # fmt: skip
    assert not [p for p in fs.ls(f"{memory_root}/out", detail=False) if p.endswith(".tmp")]
    assert read_back(url) == expected()

    # a rerun of the same plan resumes: nothing is renamed again
    NoOverwriteFileSystem.renames.clear()
    dataset().write_parquet(url, backend="threads", workers=2)
    assert all("_manifest" in dst for _, dst in NoOverwriteFileSystem.renames)


def test_a_partition_committed_but_not_listed_is_written_again(memory_root):
    url = f"nooverwrite://{memory_root}/out"
    fs = fsspec.filesystem("nooverwrite")
    dataset().write_parquet(url, backend="threads", workers=2)
    path = f"{memory_root}/out/_manifest.json"
    manifest = json.loads(fs.cat(path))
    manifest["files"] = manifest["files"][:1]  # as if the run died after partition 0's commit
    manifest["complete"] = False
    fs.pipe(path, json.dumps(manifest).encode())
    kept = fs.store[f"{memory_root}/out/part-00000.parquet"]
    NoOverwriteFileSystem.renames.clear()
    dataset().write_parquet(url, backend="threads", workers=2)
    parts = sorted(dst.rsplit("/", 1)[-1] for _, dst in NoOverwriteFileSystem.renames
                   if "part-" in dst)  # fmt: skip
    assert parts == ["part-00001.parquet", "part-00002.parquet"]  # partition 0 resumed
    assert fs.store[f"{memory_root}/out/part-00000.parquet"] is kept
    assert json.loads(fs.cat(path))["complete"] is True
    assert read_back(url) == expected()


def test_write_through_fsspecs_local_filesystem_from_worker_processes(tmp_path):
    """fsspec's local filesystem (real files) through the fsspec code path, written by
    process workers; the result equals a plain local write."""
    url = f"local://{tmp_path}/via-fsspec"
    dataset().write_parquet(url, backend="process", workers=2)
    dataset().write_parquet(str(tmp_path / "plain"), backend="process", workers=2)
    via = sorted(pq.read_table(tmp_path / "via-fsspec").column("y").to_pylist())
    plain = sorted(pq.read_table(tmp_path / "plain").column("y").to_pylist())
    assert via == plain == expected()
    assert not [p for p in (tmp_path / "via-fsspec").iterdir() if p.name.endswith(".tmp")]


def test_writing_into_its_own_input_is_refused_on_fsspec(memory_root):
    url = f"memory://{memory_root}/data"
    dataset().write_parquet(url, backend="inline")
    with pytest.raises(DataError, match="its own input|own input"):
        fj.data.read_parquet(url).write_parquet(url, backend="inline", mode="overwrite")
    assert read_back(url) == expected()  # nothing was deleted


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("operation", ["read", "write"])
def test_an_unreachable_hdfs_namenode_fails_at_once(operation):
    import hdfs_native  # noqa: F401
    url = f"hdfs://127.0.0.1:{_closed_port()}/data/table"
    start = time.monotonic()
    with pytest.raises(DataError, match="HDFS NameNode at 127.0.0.1:.*does not answer"):
        if operation == "read":
            fj.data.read_parquet(url).count()
        else:
            dataset().write_parquet(url, backend="inline")
    assert time.monotonic() - start < 10


def test_hdfs_urls_use_hdfs_natives_filesystem():
    """The path that a reachable NameNode would take: hdfs-native's fsspec class (no JVM)."""
    import hdfs_native  # noqa: F401
    fs, path = fsspec.core.url_to_fs("hdfs://namenode:8020/data/table")
    assert type(fs).__module__.startswith("hdfs_native") and path == "/data/table"
    assert FsspecStorage.commit is not None
