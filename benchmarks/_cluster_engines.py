"""The two engines, each started once by the benchmark and shared by native code and forkjoin.

An ``Engine`` starts Ray (``ray.init``) or a Dask ``LocalCluster`` + ``Client`` itself, with
``WORKERS`` single-threaded workers on loopback and no dashboard, and forkjoin joins that same
instance (Ray: already initialised in this process; Dask: ``address=client``): the native code
and forkjoin then run on the very same workers, so only the client-side code differs.

The native calls are what a user of the engine writes by hand:

- ``native_chunks``: one remote call per chunk of items (``apply_chunk``), results gathered
  (on Dask the chunk's list comes back boxed: see ``apply_chunk_boxed``);
- ``native_each``: one remote call per item, the naive way
  (``ray.get([f.remote(x) for x in items])``, ``client.gather(client.map(f, items))``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _cluster_workloads import apply_chunk, apply_chunk_boxed, flatten
from _harness import WORKERS

HERE = Path(__file__).resolve().parent


class Engine:
    name = ""  # "ray", "dask": the forkjoin backend name
    label = ""  # "Ray", "Dask"
    each_api = ""  # how the native per-item code reads, for the tables
    chunk_api = ""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    def fj_options(self) -> dict[str, Any]:
        """What ``fj.map`` needs to run on this engine's instance."""
        return {"backend": self.name, "workers": WORKERS}

    def native_chunks(self, fn: Callable[[Any], Any], chunks: Sequence[list[Any]]) -> list[Any]:
        raise NotImplementedError

    def native_each(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        raise NotImplementedError


class RayEngine(Engine):
    name = "ray"
    label = "Ray"
    each_api = "ray.get([f.remote(x) for x in items])"
    chunk_api = "ray.get([f.remote(chunk) ...])"

    def __init__(self) -> None:
        self._remotes: dict[Callable[..., Any], Any] = {}

    def start(self) -> None:
        import ray

        ray.init(
            address="local",  # a new instance: never join another Ray running on this machine
            num_cpus=WORKERS,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            runtime_env={"env_vars": {"PYTHONPATH": str(HERE)}},
        )

    def stop(self) -> None:
        import ray

        self._remotes.clear()
        ray.shutdown()

    def version(self) -> str:
        import ray

        return str(ray.__version__)

    def _remote(self, fn: Callable[..., Any]) -> Any:
        remote = self._remotes.get(fn)
        if remote is None:
            import ray

            remote = self._remotes[fn] = ray.remote(fn)
        return remote

    def native_chunks(self, fn: Callable[[Any], Any], chunks: Sequence[list[Any]]) -> list[Any]:
        import ray

        remote = self._remote(apply_chunk)
        return flatten(ray.get([remote.remote(fn, chunk) for chunk in chunks]))

    def native_each(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        import ray

        remote = self._remote(fn)
        return list(ray.get([remote.remote(x) for x in items]))


class DaskEngine(Engine):
    name = "dask"
    label = "Dask"
    each_api = "client.gather(client.map(f, items))"
    chunk_api = "client.gather(client.map(f, chunks))"

    def __init__(self) -> None:
        self.client: Any = None
        self.cluster: Any = None

    def start(self) -> None:
        import distributed

        self.cluster = distributed.LocalCluster(
            n_workers=WORKERS,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        self.client = distributed.Client(self.cluster, set_as_default=False)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = self.cluster = None

    def version(self) -> str:
        import distributed

        return str(distributed.__version__)

    def fj_options(self) -> dict[str, Any]:
        return {**super().fj_options(), "address": self.client}

    # pure=False: a fresh computation each run. With Dask's default (pure=True) a repeated run
    # could find the previous run's results still held and skip the work.
    def native_chunks(self, fn: Callable[[Any], Any], chunks: Sequence[list[Any]]) -> list[Any]:
        futures = self.client.map(apply_chunk_boxed, [fn] * len(chunks), chunks, pure=False)
        return flatten([box[0] for box in self.client.gather(futures)])

    def native_each(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        return list(self.client.gather(self.client.map(fn, items, pure=False)))


ENGINES: dict[str, Callable[[], Engine]] = {"ray": RayEngine, "dask": DaskEngine}


def available(name: str) -> bool:
    try:
        __import__("ray" if name == "ray" else "distributed")
    except ImportError:
        return False
    return True
