"""forkjoin: parallel Python for machine learning and data processing, laptop to cluster.

Every job goes through five steps: split the work into tasks, assign each to a resource, run
them in parallel, sync what must be shared (results, progress, failures), merge the results.

>>> import forkjoin as fj
>>> fj.map(abs, [-1, -2, 3], workers=1)
[1, 2, 3]

Names are loaded on first use (PEP 562), so ``import forkjoin`` is cheap, and so is the start of
each worker process, which imports only the modules it runs.
"""

import importlib as _importlib
import typing as _typing

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "map": "forkjoin.engine.api",
    "imap": "forkjoin.engine.api",
    "map_reduce": "forkjoin.engine.api",
    "Pool": "forkjoin.engine.pool",
    "RunOptions": "forkjoin.engine.options",
    "Stats": "forkjoin.engine.events",
    "rng": "forkjoin.core.seeding",
    "run_on_devices": "forkjoin.engine.on_devices",
    "shared": "forkjoin.core.shared",
    "Shared": "forkjoin.core.shared",
    "worker_context": "forkjoin.core.context",
    "WorkerContext": "forkjoin.core.context",
    "devices": "forkjoin.machine",
    "DeviceInfo": "forkjoin.machine",
    "GPUInfo": "forkjoin.machine",
    "ForkjoinError": "forkjoin.errors",
    "TaskError": "forkjoin.errors",
    "WorkerCrashedError": "forkjoin.errors",
    "BrokenPoolError": "forkjoin.errors",
    "TaskTimeoutError": "forkjoin.errors",
    "SerializationError": "forkjoin.errors",
    "ResourceError": "forkjoin.errors",
    "DataError": "forkjoin.errors",
    "BackendUnavailableError": "forkjoin.errors",
    "dashboard": "forkjoin.observe.dashboard",
}

__all__ = [
    "BackendUnavailableError",
    "BrokenPoolError",
    "DataError",
    "DeviceInfo",
    "ForkjoinError",
    "GPUInfo",
    "Pool",
    "ResourceError",
    "RunOptions",
    "SerializationError",
    "Shared",
    "Stats",
    "TaskError",
    "TaskTimeoutError",
    "WorkerContext",
    "WorkerCrashedError",
    "__version__",
    "dashboard",
    "devices",
    "imap",
    "map",
    "map_reduce",
    "rng",
    "run_on_devices",
    "shared",
    "worker_context",
]
assert set(__all__) == {*_EXPORTS, "__version__"}


# The layers, reached as ``fj.data``, ``fj.train``... and imported (with pyarrow, torch,
# matplotlib) only when a program first touches them.
_LAYERS = ("data", "train", "bench", "testing", "observe")


def _write_run_report(*args: _typing.Any, **kwargs: _typing.Any) -> _typing.Any:
    """The analysis layer's report writer, loaded on the first report (see engine/reports.py:
    the engine may not import the layer above it, so the package hands it in)."""
    from .bench.report import write_run_report

    return write_run_report(*args, **kwargs)


from .engine import reports as _reports  # noqa: E402  (a few lines, no dependencies)

_reports.set_report_writer(_write_run_report)


def __getattr__(name: str) -> _typing.Any:
    if name in _LAYERS:
        layer = _importlib.import_module(f"forkjoin.{name}")
        globals()[name] = layer
        return layer
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'forkjoin' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if _typing.TYPE_CHECKING:
    from .core.context import WorkerContext, worker_context
    from .core.seeding import rng
    from .engine.api import imap, map, map_reduce
    from .engine.events import Stats
    from .engine.options import RunOptions
    from .engine.pool import Pool
    from .errors import (
        BackendUnavailableError,
        BrokenPoolError,
        DataError,
        ForkjoinError,
        ResourceError,
        SerializationError,
        TaskError,
        TaskTimeoutError,
        WorkerCrashedError,
    )
    from .machine import DeviceInfo, GPUInfo, devices
    from .observe.dashboard import dashboard
