"""Sinks: workers write partitions, the caller keeps the manifest; reruns resume.

::

    caller: prepare()  check the directory: empty / same plan (resume) / other plan (refuse
       │               unless mode="overwrite", which never deletes the input it reads)
       ▼               remove staging files left by a crashed run
    worker: write_partition()  .part-00003.parquet.<run>.tmp ──commit──> part-00003.parquet
       │                       (a file is visible only once complete; names are deterministic,
       ▼                        so a rerun replaces rather than duplicates)
    caller: commit()  _manifest.json rewritten atomically after each committed partition
                      ({"complete": false}), and a last time with {"complete": true}

``_manifest.json`` lists each committed file with its partition, rows and bytes, and the plan's
hash (input files with sizes and mtimes or in-memory data by content, each operation with a
fingerprint of everything its function's output depends on: ``identity.py``, and the output
format), with a digest per part so a refusal can name what changed. A rerun of the same plan
skips the partitions the manifest lists; where a fingerprint is unsure (``unsure`` in the
manifest: a lock, a file, a generator the function reads), the sink refuses to resume at all.

The directory may be local or any fsspec URL (``hdfs://``, ``memory://``...): ``storage.py``
does each step there, with a commit that needs no overwriting rename (HDFS has none).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

from ..errors import DataError
from .storage import FsspecStorage, LocalStorage, storage_for

MANIFEST = "_manifest.json"
MANIFEST_VERSION = 1
FORMATS = {"parquet": "parquet", "csv": "csv", "json": "jsonl"}
_OURS = re.compile(
    r"^(part-\d{5,}\.(parquet|csv|jsonl)|\.part-\d{5,}\..*\.tmp|_manifest\.json(\..*\.tmp)?)$"
)


@dataclass(frozen=True)
class SinkSpec:
    """Where and how workers write (shipped with each task)."""

    format: str
    directory: str
    run_id: str
    compression: str | None = None

    def file_name(self, index: int) -> str:
        return f"part-{index:05d}.{FORMATS[self.format]}"


@dataclass(frozen=True)
class FileInfo:
    name: str
    partition: int
    rows: int
    bytes: int


def write_partition(table: pa.Table, index: int, sink: SinkSpec) -> FileInfo:
    """Write one partition to a staging name and rename it into place (in a worker)."""
    storage = storage_for(sink.directory)
    name = sink.file_name(index)
    staging = f".{name}.{sink.run_id}.{os.getpid()}.tmp"
    try:
        if sink.format == "parquet":
            import pyarrow.parquet as pq

            with storage.open(staging, "wb") as handle:
                pq.write_table(table, handle, compression=sink.compression or "snappy",
                               use_dictionary=dictionary_columns(table))  # fmt: skip
        elif sink.format == "csv":
            import pyarrow.csv as pcsv

            with storage.open(staging, "wb") as handle:
                pcsv.write_csv(table, handle)
        else:
            with storage.open(staging, "w") as handle:
                for row in table.to_pylist():
                    handle.write(json.dumps(row, default=str, ensure_ascii=False))
                    handle.write("\n")
        size = storage.size(staging) or 0
        storage.commit(staging, name)
    except BaseException:
        storage.remove(staging)
        raise
    return FileInfo(name, index, table.num_rows, size)


# A column whose first DICTIONARY_SAMPLE_ROWS values are more than DICTIONARY_MAX_DISTINCT
# distinct is written without a dictionary: for ids, measurements and floats pyarrow would
# build a dictionary, find it too big and start again (a 250k-row float64 partition of
# benchmarks/bench_data.py took 80 ms instead of 23 ms to write, for a larger file).
DICTIONARY_SAMPLE_ROWS = 4096
DICTIONARY_MAX_DISTINCT = 0.5


def dictionary_columns(table: pa.Table) -> bool | list[str]:
    """``use_dictionary=`` for ``pq.write_table``: True (every column, pyarrow's default), or
    the flat columns worth a dictionary (what Polars decides the same way). Tables with
    nested columns keep the default (pyarrow names their leaves, not the columns)."""
    import pyarrow.compute as pc

    sample = table.slice(0, DICTIONARY_SAMPLE_ROWS)
    if not sample.num_rows or any(pa.types.is_nested(t) for t in table.schema.types):
        return True
    keep = [
        name
        for name, column in zip(table.column_names, sample.columns, strict=True)
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
                or pa.types.is_temporal(column.type) or pa.types.is_decimal(column.type))
        or pc.count_distinct(column).as_py() <= DICTIONARY_MAX_DISTINCT * sample.num_rows
    ]  # fmt: skip
    return True if len(keep) == table.num_columns else keep


# -- the caller's side ---------------------------------------------------------------------------


def read_manifest(directory: str) -> dict[str, Any] | None:
    storage = storage_for(directory)
    try:
        with storage.open(MANIFEST, "r") as handle:
            data: dict[str, Any] = json.load(handle)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise DataError(
            f"{storage.join(MANIFEST)} is not a valid forkjoin manifest ({exc})"
        ) from None
    return data


def _write_json_atomically(storage: LocalStorage, name: str, data: dict[str, Any]) -> None:
    staging = f"{name}.{uuid.uuid4().hex[:8]}.tmp"
    with storage.open(staging, "w") as handle:
        json.dump(data, handle, indent=1)
    storage.commit(staging, name)


def _inside(path: str, directory: str, storage: LocalStorage) -> bool:
    if isinstance(storage, FsspecStorage) or "://" in path:  # an fsspec path: same filesystem?
        if not isinstance(storage, FsspecStorage) or "://" not in path:
            return False
        protocol, _, inner = path.partition("://")
        if protocol not in _protocols(storage.fs):
            return False
        inner, own = inner.rstrip("/"), storage.path.rstrip("/")
        return inner == own or inner.startswith(own + "/")
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _protocols(fs: Any) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


class Committer:
    """The caller's record of a write: which partitions are committed, in ``_manifest.json``."""

    def __init__(self, directory: str, fmt: str, plan_hash: str, *, mode: str, resume: bool,
                 inputs: list[str], compression: str | None = None,
                 plan_parts: Sequence[tuple[str, str]] = (),
                 unsure: Sequence[str] = ()) -> None:  # fmt: skip
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
        if mode not in ("create", "overwrite"):
            raise ValueError(f"mode must be 'create' or 'overwrite', got {mode!r}")
        self.storage = storage_for(directory)
        self.directory = self.storage.directory
        self.format = fmt
        self.plan_hash = plan_hash
        self.plan_parts = [list(part) for part in plan_parts]  # (what, digest): say what changed
        self.unsure = list(unsure)  # why this plan's hash cannot be trusted (then: no resume)
        self.files: dict[int, FileInfo] = {}
        for source in inputs:
            if _inside(source, self.directory, self.storage):
                raise DataError(
                    f"refusing to write into {self.directory}: it holds this plan's own input "
                    f"{source}; write to another directory"
                    + (" (mode='overwrite' never deletes the input)" if mode == "overwrite" else "")
                )
        self.spec = SinkSpec(fmt, self.directory, uuid.uuid4().hex[:8], compression)
        self._prepare(mode, resume)
        # The manifest exists before any worker commits a file: a caller killed between a
        # worker's commit and its own manifest update leaves a directory that a rerun resumes
        # (part files it does not list are written again), not one it must refuse.
        self._write(complete=False)

    def _prepare(self, mode: str, resume: bool) -> None:
        directory, storage = self.directory, self.storage
        storage.prepare()
        manifest = read_manifest(directory)
        names = storage.names()
        ours = [n for n in names if _OURS.match(n)]
        if mode == "overwrite":
            for name in ours:
                storage.remove(name)
            return
        for name in ours:  # staging files of a crashed run: never visible, never committed
            if name.endswith(".tmp"):
                storage.remove(name)
        if manifest is None:
            visible = [n for n in names if not n.startswith(".") and not n.endswith(".tmp")]
            if visible:
                raise DataError(
                    f"{directory} is not empty ({len(visible)} entries, e.g. "
                    f"{sorted(visible)[0]!r}) "
                    f"and has no {MANIFEST}; use mode='overwrite' to replace its part files, or "
                    f"write to a new directory"
                )
            return
        if self.unsure or manifest.get("unsure"):
            why = "; ".join(self.unsure or manifest["unsure"])
            raise DataError(
                f"refusing to resume into {directory}: forkjoin cannot tell whether the output "
                f"there was computed by this same code and data ({why}). Use mode='overwrite' "
                f"to compute it again, or a new directory; or pass a value forkjoin can "
                f"fingerprint (plain data, or an object whose class defines "
                f"__forkjoin_token__() returning what identifies its state)"
            )
        if manifest.get("plan_hash") != self.plan_hash or manifest.get("format") != self.format:
            raise DataError(
                f"{directory} holds the output of a different plan (plan hash "
                f"{manifest.get('plan_hash')}, format {manifest.get('format')}; this plan is "
                f"{self.plan_hash}, {self.format}{self._changed(manifest)}); refusing to mix "
                f"outputs: use mode='overwrite' or a new directory"
            )
        if not resume:
            raise DataError(
                f"{directory} already holds this plan's output; pass resume=True to finish or "
                f"reuse it, or mode='overwrite' to write it again"
            )
        for entry in manifest.get("files", []):
            info = FileInfo(**entry)
            if storage.size(info.name) == info.bytes:
                self.files[info.partition] = info

    def _changed(self, manifest: dict[str, Any]) -> str:
        """What differs from the plan that wrote ``manifest``, e.g. ", changed: operation 1:
        map_batches(scale)" (a function's code, closure, defaults or globals)."""
        before = manifest.get("plan_parts")
        if not isinstance(before, list) or len(before) != len(self.plan_parts):
            return ""
        changed = [now[0] for now, was in zip(self.plan_parts, before, strict=True) if now != was]
        return f"; changed: {', '.join(changed)}" if changed else ""

    @property
    def committed(self) -> frozenset[int]:
        return frozenset(self.files)

    def commit(self, info: FileInfo) -> None:
        self.files[info.partition] = info
        self._write(complete=False)

    def finish(self) -> dict[str, Any]:
        """Write the final manifest (the last thing a write does) and return it."""
        return self._write(complete=True)

    def _write(self, complete: bool) -> dict[str, Any]:
        files = [asdict(self.files[i]) for i in sorted(self.files)]
        data = {
            "version": MANIFEST_VERSION,
            "format": self.format,
            "plan_hash": self.plan_hash,
            "plan_parts": self.plan_parts,
            "unsure": self.unsure,
            "complete": complete,
            "partitions": len(files),
            "rows": sum(f["rows"] for f in files),
            "files": files,
        }
        _write_json_atomically(self.storage, MANIFEST, data)
        return data
