"""What this machine has (usable CPUs, memory, GPUs) and how a worker is capped to its share.

(DESIGN.md calls this module ``devices.py``; it is ``machine.py`` because a submodule named
``devices`` would replace the public function ``forkjoin.devices`` as soon as it is imported.)

"Usable" CPUs honour the process's CPU affinity and a cgroup CPU quota (containers), not just
``os.cpu_count()``. GPUs are found with ``nvidia-smi`` so that CUDA is never initialised in the
caller (a CUDA context in the parent breaks later forks and costs memory on every device).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

# Environment variables that cap the thread pools of BLAS / OpenMP / numexpr in a worker, so that
# N workers x M threads never exceeds the cores (the libraries read them when they load).
THREAD_CAP_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "BLIS_NUM_THREADS",
)


@dataclass(frozen=True)
class GPUInfo:
    """One GPU as the driver reports it: its index, model name and total memory in bytes."""

    index: int
    name: str
    memory_total: int  # bytes


@dataclass(frozen=True)
class DeviceInfo:
    """What this machine offers a forkjoin pool: usable CPUs (affinity and cgroup aware), all
    CPUs, total and available memory in bytes, and the GPUs; ``as_dict()`` for JSON."""

    cpus: int  # usable by this process
    cpus_total: int  # os.cpu_count()
    memory_total: int  # bytes
    memory_available: int  # bytes
    gpus: list[GPUInfo] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cgroup_cpu_limit() -> float | None:
    """CPUs allowed by a cgroup v2 (cpu.max) or v1 (cfs quota) limit, if any."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota_us = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period_us = int(f.read())
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
    except (OSError, ValueError):
        pass
    return None


def usable_cpu_count() -> int:
    """CPUs this process may actually use: affinity mask, then cgroup quota (rounded up)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        count = min(count, max(1, math.ceil(limit)))
    return max(1, count)


def thread_cap_env(threads: int) -> dict[str, str]:
    """Environment that caps native thread pools at ``threads`` per worker."""
    return {name: str(max(1, threads)) for name in THREAD_CAP_VARIABLES}


_MEMORY_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_memory(amount: int | float | str) -> int:
    """Bytes from ``4_000_000``, ``"4GB"``, ``"512 MiB"``."""
    if isinstance(amount, (int, float)):
        return int(amount)
    text = amount.strip().lower().replace(" ", "")
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(number) :]
    if unit not in _MEMORY_UNITS or not number:
        raise ValueError(f"cannot read {amount!r} as an amount of memory; write e.g. '4GB'")
    return int(float(number) * _MEMORY_UNITS[unit])


def _gpus_from_nvidia_smi() -> list[GPUInfo]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[0].isdigit():
            gpus.append(GPUInfo(int(parts[0]), parts[1], int(float(parts[2])) * 2**20))
    return gpus


# Declares logical GPUs (``FORKJOIN_GPUS=0,1``) in place of what nvidia-smi finds: assignment,
# pinning and sharing then run, and are tested, on machines without a GPU.
LOGICAL_GPUS_ENV = "FORKJOIN_GPUS"


def _logical_gpus(spec: str) -> list[GPUInfo]:
    ids = [part.strip() for part in spec.split(",") if part.strip()]
    if not all(part.isdigit() for part in ids):
        raise ValueError(
            f"{LOGICAL_GPUS_ENV}={spec!r}: expected GPU indices separated by commas, e.g. '0,1'"
        )
    return [GPUInfo(int(part), "logical GPU (FORKJOIN_GPUS)", 0) for part in ids]


def _visible(gpus: list[GPUInfo]) -> list[GPUInfo]:
    """Only the GPUs this process may use: CUDA_VISIBLE_DEVICES (indices) narrows the list."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return gpus
    wanted = [part.strip() for part in visible.split(",") if part.strip()]
    by_index = {str(gpu.index): gpu for gpu in gpus}
    return [by_index[part] for part in wanted if part in by_index]


def gpus() -> list[GPUInfo]:
    """The GPUs this process may use: logical ones from ``FORKJOIN_GPUS``, else nvidia-smi's."""
    spec = os.environ.get(LOGICAL_GPUS_ENV)
    found = _logical_gpus(spec) if spec is not None else _gpus_from_nvidia_smi()
    return _visible(found)


def devices() -> DeviceInfo:
    """Usable CPUs, memory and GPUs of this machine, without initialising CUDA."""
    import psutil

    memory = psutil.virtual_memory()
    return DeviceInfo(
        cpus=usable_cpu_count(),
        cpus_total=os.cpu_count() or 1,
        memory_total=memory.total,
        memory_available=memory.available,
        gpus=gpus(),
    )
