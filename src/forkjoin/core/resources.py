"""assign: the shape of each worker slot (cpus, GPUs, memory) and which GPUs each slot owns.

A pool is a set of identical slots, one worker each; a worker runs one task at a time, so a task
runs where its resources are free by construction: the slot's resources are the task's while it
runs. The shape comes from ``resources_per_worker`` (or, for ``fj.map``, the per-task
``resources``), and the number of slots from what the machine has::

    machine: 2 GPUs, 16 cpus          {"gpu": 1}  -> 2 slots: GPU 0 | GPU 1
                                      {"gpu": 0.5} -> 4 slots: GPU 0 | GPU 0 | GPU 1 | GPU 1
                                      {"cpu": 4}  -> 4 slots of 4 cpus (thread caps 4)

A worker process is pinned to its slot's GPUs through ``CUDA_VISIBLE_DEVICES``, set in its
environment before its interpreter starts, so CUDA there only ever sees its own devices
(``cuda:0`` is its first). A request no slot can ever satisfy is a ``ResourceError`` at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ResourceError
from ..machine import DeviceInfo, parse_memory

RESOURCE_NAMES = ("cpu", "gpu", "memory")
# Fractions of a GPU are rounded to this many digits, so 1/3 + 1/3 + 1/3 fills one GPU.
_GPU_DIGITS = 6


@dataclass(frozen=True)
class Shape:
    """What one slot (or one task) needs: cpus, GPUs (maybe a fraction) and bytes of memory."""

    cpu: float = 0.0
    gpu: float = 0.0
    memory: int = 0

    @classmethod
    def parse(cls, resources: Mapping[str, Any] | None) -> Shape:
        if not resources:
            return cls()
        unknown = set(resources) - set(RESOURCE_NAMES)
        if unknown:
            raise ResourceError(
                f"unknown resource(s) {sorted(unknown)}; forkjoin schedules cpu, gpu and memory"
            )
        cpu = float(resources.get("cpu", 0))
        gpu = round(float(resources.get("gpu", 0)), _GPU_DIGITS)
        memory = parse_memory(resources.get("memory", 0))
        if cpu < 0 or gpu < 0 or memory < 0:
            raise ResourceError(f"resources cannot be negative: {dict(resources)}")
        if gpu > 1 and gpu != int(gpu):
            raise ResourceError(
                f"gpu={gpu:g}: above 1 a request must be a whole number of GPUs (a fraction "
                f"shares one GPU between workers)"
            )
        return cls(cpu, gpu, memory)

    def fits_in(self, other: Shape) -> bool:
        return self.cpu <= other.cpu and self.gpu <= other.gpu and self.memory <= other.memory

    def describe(self) -> str:
        parts = []
        if self.cpu:
            parts.append(f"cpu={self.cpu:g}")
        if self.gpu:
            parts.append(f"gpu={self.gpu:g}")
        if self.memory:
            parts.append(f"memory={self.memory / 2**30:.1f}GiB")
        return ", ".join(parts) or "nothing"


@dataclass(frozen=True)
class Slot:
    """One worker's share of the machine."""

    index: int
    shape: Shape
    threads: int  # native thread cap (BLAS, OpenMP, torch) for its worker
    gpu_ids: tuple[int, ...] = field(default=())

    @property
    def device(self) -> str:
        """Where its tasks should put tensors, in a worker process pinned to its GPUs: the
        first of them (``cuda:0``), or the CPU."""
        return "cuda:0" if self.gpu_ids else "cpu"

    def device_in_caller(self) -> str:
        """The same device seen from the caller's process (threads, inline: no pinning), where
        CUDA numbers the GPUs the caller sees from 0."""
        if not self.gpu_ids:
            return "cpu"
        from ..machine import gpus

        visible = [gpu.index for gpu in gpus()]
        return f"cuda:{visible.index(self.gpu_ids[0])}"

    def capacity(self, machine: DeviceInfo) -> Shape:
        """What a task on this slot may ask for: its shape, where the shape says nothing its
        share of the cpus and all of the memory."""
        return Shape(
            self.shape.cpu or float(self.threads),
            self.shape.gpu,
            self.shape.memory or machine.memory_total,
        )

    def environment(self) -> dict[str, str]:
        """Variables set in its worker before the interpreter starts (GPU pinning)."""
        if self.shape.gpu == 0:
            return {}
        return {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in self.gpu_ids)}


def default_slots(workers: int) -> list[Slot]:
    """Slots of a pool that asked for nothing: the cores shared out, no GPU."""
    from ..machine import usable_cpu_count

    threads = max(1, usable_cpu_count() // max(1, workers))
    return [Slot(index, Shape(), threads) for index in range(workers)]


def machine_shape(machine: DeviceInfo) -> Shape:
    return Shape(float(machine.cpus), float(len(machine.gpus)), machine.memory_total)


def _describe_machine(machine: DeviceInfo) -> str:
    return (
        f"cpus={machine.cpus}, gpus={len(machine.gpus)}, "
        f"memory={machine.memory_total / 2**30:.1f} GiB"
    )


def capacity(shape: Shape, machine: DeviceInfo) -> int:
    """How many slots of ``shape`` the machine holds at once."""
    counts = []
    if shape.cpu:
        counts.append(math.floor(machine.cpus / shape.cpu + 1e-9))
    if shape.gpu:
        counts.append(math.floor(len(machine.gpus) / shape.gpu + 1e-9))
    if shape.memory:
        counts.append(machine.memory_total // shape.memory)
    return min(counts) if counts else machine.cpus


def check_request(request: Shape, slot: Slot | None, machine: DeviceInfo) -> None:
    """Fail at once when a task asks for more than any slot (or the machine) can give."""
    if not request.fits_in(machine_shape(machine)):
        raise ResourceError(
            f"a task asks for {request.describe()} but this machine has "
            f"{_describe_machine(machine)}; lower the request"
        )
    if slot is not None and not request.fits_in(slot.capacity(machine)):
        raise ResourceError(
            f"a task asks for {request.describe()} but this pool's workers each have "
            f"{slot.capacity(machine).describe()}; create the pool with "
            f"resources_per_worker= at least that large"
        )


def plan_slots(workers: int | None, shape: Shape, machine: DeviceInfo) -> list[Slot]:
    """The slots of a pool of ``workers`` workers of ``shape`` (all that fit, when None)."""
    fit = capacity(shape, machine)
    if fit < 1:
        raise ResourceError(
            f"one worker needs {shape.describe()} but this machine has "
            f"{_describe_machine(machine)}; lower resources_per_worker"
        )
    count = fit if workers is None else workers
    if shape != Shape() and count > fit:
        raise ResourceError(
            f"{count} workers with {shape.describe()} each need more than this machine has "
            f"({_describe_machine(machine)}): at most {fit} fit; lower workers="
        )
    gpu_ids = [gpu.index for gpu in machine.gpus]
    if shape.cpu:
        threads = max(1, int(shape.cpu))
    else:
        threads = max(1, machine.cpus // max(1, count))
    slots = []
    for index in range(count):
        owned: tuple[int, ...] = ()
        if shape.gpu >= 1:
            per = int(shape.gpu)
            owned = tuple(gpu_ids[index * per : (index + 1) * per])
        elif shape.gpu > 0:
            sharing = max(1, math.floor(1 / shape.gpu + 1e-9))  # workers on one GPU
            owned = (gpu_ids[index // sharing],)
        slots.append(Slot(index, shape, threads, owned))
    return slots
