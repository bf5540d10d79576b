"""Where a sink writes: a local directory (``os``) or any fsspec filesystem (``hdfs://``...).

The sink's commit protocol needs only what every one of them makes atomic, HDFS included: a
file written under a staging name, then renamed to its final name **where no file has that
name** (HDFS's rename never overwrites; ``os.replace`` would, but the protocol does not count
on it). A final name that already exists is the leftover of a run that crashed before its
manifest listed it (names are deterministic): it is deleted first, then the rename is made.
So the same steps run on local disk (``LocalStorage``, plain ``os`` calls) and through fsspec
(``FsspecStorage``: ``fs.open``, ``fs.mv``, ``fs.rm``, ``fs.ls``; no local ``os`` call).

``hdfs://`` goes through the ``hdfs-native`` package's fsspec filesystem (no JVM, no libhdfs).
An HDFS client retries an unreachable NameNode for minutes, so forkjoin first checks that the
NameNode's port answers (``HDFS_PROBE_SECONDS``) and fails at once with a ``DataError``
otherwise.
"""

from __future__ import annotations

import os
import socket
from typing import IO, Any
from urllib.parse import urlsplit

from ..errors import DataError

# How long the NameNode's port may take to answer before an hdfs:// path is refused.
HDFS_PROBE_SECONDS = 3.0
# The NameNode's RPC port when the URL names none (Hadoop's fs.defaultFS default).
HDFS_DEFAULT_PORT = 8020


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def check_reachable(url: str) -> None:
    """Refuse an ``hdfs://`` (or ``viewfs://``) URL whose NameNode does not answer, at once."""
    parts = urlsplit(url)
    if parts.scheme not in ("hdfs", "viewfs") or not parts.hostname:
        return
    port = parts.port or HDFS_DEFAULT_PORT
    try:
        with socket.create_connection((parts.hostname, port), HDFS_PROBE_SECONDS):
            return
    except OSError as exc:
        raise DataError(
            f"{url}: the HDFS NameNode at {parts.hostname}:{port} does not answer ({exc}); "
            f"check the host and port (the NameNode's RPC port, often 8020 or 9000) and that "
            f"this machine can reach it"
        ) from exc


class LocalStorage:
    """A local directory through ``os``."""

    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(directory.removeprefix("file://"))

    def join(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def prepare(self) -> None:
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise DataError(f"{self.directory} exists and is not a directory")
        os.makedirs(self.directory, exist_ok=True)

    def names(self) -> list[str]:
        return os.listdir(self.directory)

    def size(self, name: str) -> int | None:
        try:
            return os.path.getsize(self.join(name))
        except FileNotFoundError:
            return None

    def open(self, name: str, mode: str) -> IO[Any]:
        return open(self.join(name), mode, encoding=None if "b" in mode else "utf-8")

    def remove(self, name: str) -> None:
        try:
            os.unlink(self.join(name))
        except FileNotFoundError:
            pass

    def commit(self, staging: str, final: str) -> None:
        """Make ``staging`` visible as ``final`` at once (a local rename may replace)."""
        os.replace(self.join(staging), self.join(final))


class FsspecStorage(LocalStorage):
    """A directory on an fsspec filesystem; only fsspec calls, never local ``os`` ones."""

    def __init__(self, directory: str) -> None:
        check_reachable(directory)
        try:
            import fsspec
        except ImportError:
            raise DataError(
                f"writing to {directory!r} needs fsspec: pip install fsspec (and the "
                f"filesystem's package: hdfs-native for hdfs://, s3fs for s3://)"
            ) from None
        self.fs, self.path = fsspec.core.url_to_fs(directory)
        self.directory = directory.rstrip("/")

    def join(self, name: str) -> str:
        return f"{self.path.rstrip('/')}/{name}"

    def prepare(self) -> None:
        if self.fs.exists(self.path) and not self.fs.isdir(self.path):
            raise DataError(f"{self.directory} exists and is not a directory")
        self.fs.makedirs(self.path, exist_ok=True)

    def names(self) -> list[str]:
        return [
            entry.rstrip("/").rsplit("/", 1)[-1] for entry in self.fs.ls(self.path, detail=False)
        ]

    def size(self, name: str) -> int | None:
        try:
            return int(self.fs.size(self.join(name)))
        except FileNotFoundError:
            return None

    def open(self, name: str, mode: str) -> IO[Any]:
        if "b" in mode:
            return self.fs.open(self.join(name), mode)  # type: ignore[no-any-return]
        return self.fs.open(self.join(name), mode, encoding="utf-8")  # type: ignore[no-any-return]

    def remove(self, name: str) -> None:
        try:
            self.fs.rm(self.join(name))
        except FileNotFoundError:
            pass

    def commit(self, staging: str, final: str) -> None:
        """Make ``staging`` visible as ``final`` with a rename that never overwrites (HDFS's
        only atomic step): a ``final`` already there is a crashed run's unlisted leftover,
        removed first."""
        if self.size(final) is not None:
            self.remove(final)
        self.fs.mv(self.join(staging), self.join(final))


def storage_for(directory: str) -> LocalStorage:
    return FsspecStorage(directory) if is_url(directory) else LocalStorage(directory)
