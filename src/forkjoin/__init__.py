"""forkjoin: parallel Python for machine learning and data processing, laptop to cluster.

Every job goes through five steps: split the work into tasks, assign each to a resource, run
them in parallel, sync what must be shared (results, progress, failures), merge the results.

>>> import forkjoin as fj
>>> fj.map(abs, [-1, -2, 3], workers=1)
[1, 2, 3]
"""

from __future__ import annotations

from .devices import DeviceInfo, GPUInfo, devices
from .engine.api import imap, map, map_reduce
from .engine.events import Stats
from .engine.options import RunOptions
from .engine.pool import Pool
from .engine.seeding import rng
from .errors import (
    BackendUnavailableError,
    DataError,
    ForkjoinError,
    ResourceError,
    SerializationError,
    TaskError,
    TaskTimeoutError,
    WorkerCrashedError,
)

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "DataError",
    "DeviceInfo",
    "ForkjoinError",
    "GPUInfo",
    "Pool",
    "ResourceError",
    "RunOptions",
    "SerializationError",
    "Stats",
    "TaskError",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "__version__",
    "devices",
    "imap",
    "map",
    "map_reduce",
    "rng",
]
