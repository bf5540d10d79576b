"""Finding the input files: local paths, globs, directories (recursively, hidden and _underscore
names skipped, a forkjoin manifest honoured) and fsspec URLs; opening and stat-ing them."""

from __future__ import annotations

import glob as _glob
import json
import os
from collections.abc import Sequence
from typing import Any

from ..errors import DataError

# -- discovery -----------------------------------------------------------------------------------


def _filesystem(path: str) -> tuple[Any, str]:
    """(fsspec filesystem or None, path on it) for a local path or a URL."""
    if "://" not in path or path.startswith("file://"):
        return None, path.removeprefix("file://")
    try:
        import fsspec
    except ImportError:
        from ..errors import BackendUnavailableError

        raise BackendUnavailableError(
            f"reading {path!r} needs fsspec: pip install fsspec (and the filesystem's package)"
        ) from None
    from .storage import check_reachable

    check_reachable(path)  # an unreachable hdfs:// NameNode: a DataError now, not minutes later
    fs, inner = fsspec.core.url_to_fs(path)
    return fs, inner


def _visible(name: str) -> bool:
    base = name.rstrip("/").rsplit("/", 1)[-1]
    return not base.startswith((".", "_"))


def discover(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], suffixes: tuple[str, ...]
) -> tuple[Any, list[str]]:
    """Sorted files named by ``paths``: files, globs, or directories (searched recursively for
    ``suffixes``; names starting with ``.`` or ``_``, like staging files and manifests, are
    skipped). All paths must be on one filesystem."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise DataError("no input paths given")
    fs, _ = _filesystem(os.fspath(items[0]))
    found: list[str] = []
    for item in items:
        text = os.fspath(item)
        item_fs, path = _filesystem(text)
        if (item_fs is None) != (fs is None):
            raise DataError(f"all inputs must be on one filesystem; {text!r} is not")
        found += _discover_one(item_fs, path, text, suffixes)
    return fs, found


def _discover_one(fs: Any, path: str, shown: str, suffixes: tuple[str, ...]) -> list[str]:
    if fs is None:
        if any(ch in path for ch in "*?["):
            matches = sorted(p for p in _glob.glob(path, recursive=True) if os.path.isfile(p))
            if not matches:
                raise DataError(f"no files match {shown!r}")
            return matches
        if os.path.isdir(path):
            committed = _manifest_files(path)
            if committed is not None:
                return committed
            out = []
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if _visible(d))
                out += [
                    os.path.join(root, f)
                    for f in sorted(files)
                    if _visible(f) and f.lower().endswith(suffixes)
                ]
            if not out:
                raise DataError(f"no {'/'.join(suffixes)} files in directory {shown!r}")
            return out
        if not os.path.exists(path):
            raise DataError(f"input not found: {shown!r}")
        return [path]
    if any(ch in path for ch in "*?["):
        matches = sorted(p for p in fs.glob(path) if fs.isfile(p))
    elif fs.isdir(path) and (listed := _fs_manifest_files(fs, path)) is not None:
        matches = listed
    elif fs.isdir(path):
        matches = sorted(
            p
            for p in fs.find(path)
            if _visible(p) and p.lower().endswith(suffixes) and "/." not in p and "/_" not in p
        )
    elif fs.exists(path):
        matches = [path]
    else:
        raise DataError(f"input not found: {shown!r}")
    if not matches:
        raise DataError(f"no files match {shown!r}")
    return matches


def _manifest_files(directory: str) -> list[str] | None:
    """The files a forkjoin ``_manifest.json`` in ``directory`` lists as committed, or None.

    A directory that forkjoin wrote is read as its manifest says: a run that stopped part-way
    may have left complete files it had not recorded yet (a rerun replaces them), and those
    are not part of the output until it does."""
    try:
        with open(os.path.join(directory, "_manifest.json"), encoding="utf-8") as handle:
            manifest = json.load(handle)
        names = [entry["name"] for entry in manifest["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [os.path.join(directory, name) for name in sorted(names)]


def _fs_manifest_files(fs: Any, directory: str) -> list[str] | None:
    """``_manifest_files`` on an fsspec filesystem."""
    try:
        with fs.open(f"{directory.rstrip('/')}/_manifest.json", "rb") as handle:
            manifest = json.load(handle)
        names = [entry["name"] for entry in manifest["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [f"{directory.rstrip('/')}/{name}" for name in sorted(names)]


def _open(fs: Any, path: str) -> Any:
    return open(path, "rb") if fs is None else fs.open(path, "rb")


def _stat(fs: Any, path: str) -> tuple[int, int]:
    """(size, mtime in ns) of a file."""
    if fs is None:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    info = fs.info(path)
    mtime = info.get("mtime") or info.get("LastModified") or 0
    try:
        mtime_ns = int(float(mtime) * 1e9)
    except (TypeError, ValueError):
        mtime_ns = hash(str(mtime))
    return int(info.get("size") or 0), mtime_ns
