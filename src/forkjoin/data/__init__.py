"""forkjoin.data: parallel, streaming, resumable processing of Parquet / CSV / JSON Lines data.

::

    read_parquet / read_csv / read_json / from_items / from_pandas / from_arrow   (sources.py)
       │  partitions: row groups, byte ranges, slices; only metadata is read here
       ▼
    Dataset: lazy operations, row-wise ones fused into one task per partition      (plan.py)
       │  map_batches, map, flat_map, filter, select/rename/add_column, limit,
       │  repartition, groupby().agg()                                       (aggregate.py)
       │  join, sort, map_groups, random_shuffle, distinct: exchanges   (join.py, sort.py...)
       ▼
    execution on any backend, a bounded number of partitions in flight           (execute.py)
       │
       ▼
    consumers (to_arrow, to_pandas, iter_batches, take, count...) or sinks: write_parquet /
    write_csv / write_json, committed atomically with _manifest.json; reruns resume (sinks.py)

All-to-all operations (exchange.py): ``join`` (broadcast or partitioned hash join, every
``how``), a global ``sort`` that never collects, ``groupby().map_groups()``, ``random_shuffle``,
``repartition(n, keys=)``, ``distinct`` and ``unique``. Each input partition is split into
buckets by key (hash or range), buckets move through memory or spill files (spill.py), and one
task per bucket runs a library's kernel on it (kernels.py: Polars when installed, else Acero).

>>> import forkjoin as fj
>>> fj.data.from_items([{"k": i % 2, "x": i} for i in range(6)]).groupby("k").agg(
...     {"x": "sum"}).to_pandas(workers=1).values.tolist()
[[0, 6], [1, 9]]
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

# public name -> module that defines it; loaded on first use, so ``import forkjoin.data`` (and
# the CLI, which imports forkjoin.data.commands) does not import pyarrow until it is needed.
_EXPORTS = {
    "read_parquet": "forkjoin.data.api",
    "read_csv": "forkjoin.data.api",
    "read_json": "forkjoin.data.api",
    "from_items": "forkjoin.data.api",
    "from_pandas": "forkjoin.data.api",
    "from_arrow": "forkjoin.data.api",
    "Dataset": "forkjoin.data.dataset",
    "GroupedDataset": "forkjoin.data.dataset",
    "DataStats": "forkjoin.data.execute",
    "Reducer": "forkjoin.data.aggregate",
    "DataError": "forkjoin.errors",
    "StageError": "forkjoin.data.stages",  # issue 18
    "DatasetShard": "forkjoin.data.shard",  # issue 18
}

__all__ = [
    "DataError",
    "DataStats",
    "Dataset",
    "DatasetShard",
    "GroupedDataset",
    "Reducer",
    "StageError",
    "from_arrow",
    "from_items",
    "from_pandas",
    "read_csv",
    "read_json",
    "read_parquet",
]
assert set(__all__) == set(_EXPORTS)


def __getattr__(name: str) -> _typing.Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'forkjoin.data' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if _typing.TYPE_CHECKING:
    from ..errors import DataError
    from .aggregate import Reducer
    from .api import from_arrow, from_items, from_pandas, read_csv, read_json, read_parquet
    from .dataset import Dataset, GroupedDataset
    from .execute import DataStats
    from .shard import DatasetShard
    from .stages import StageError
