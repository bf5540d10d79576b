"""machine.py (fj.devices): what the machine has, and the per-worker thread caps."""

from __future__ import annotations

import os

import pytest

import forkjoin as fj
from forkjoin.machine import THREAD_CAP_VARIABLES, parse_memory, thread_cap_env, usable_cpu_count


def test_usable_cpus_follow_affinity() -> None:
    assert usable_cpu_count() <= len(os.sched_getaffinity(0))
    assert usable_cpu_count() >= 1


def test_usable_cpus_shrink_with_affinity() -> None:
    original = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(original)})
        assert usable_cpu_count() == 1
        assert fj.devices().cpus == 1
    finally:
        os.sched_setaffinity(0, original)


def test_devices_reports_memory_and_no_gpu_here() -> None:
    info = fj.devices()
    assert info.memory_total >= info.memory_available > 0
    assert info.cpus_total >= info.cpus
    assert isinstance(info.gpus, list)
    assert info.as_dict()["cpus"] == info.cpus


@pytest.mark.parametrize(
    ("text", "expected"),
    [(1024, 1024), ("4GB", 4 * 10**9), ("512 MiB", 512 * 2**20), ("1.5gib", int(1.5 * 2**30))],
)
def test_parse_memory(text: object, expected: int) -> None:
    assert parse_memory(text) == expected  # type: ignore[arg-type]


def test_parse_memory_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="4GB"):
        parse_memory("lots")


def test_thread_caps_cover_every_library() -> None:
    env = thread_cap_env(3)
    assert set(env) == set(THREAD_CAP_VARIABLES)
    assert set(env.values()) == {"3"}
    assert thread_cap_env(0)["OMP_NUM_THREADS"] == "1"


def test_impossible_resource_request_fails_at_once() -> None:
    with pytest.raises(fj.ResourceError, match="gpu"):
        fj.map(abs, [1, 2], resources={"gpu": 1})
    with pytest.raises(fj.ResourceError, match="cpu"):
        fj.map(abs, [1, 2], resources={"cpu": 10_000})
    with pytest.raises(fj.ResourceError, match="unknown"):
        fj.map(abs, [1, 2], resources={"tpu": 1})
    assert fj.map(abs, [-1, 2], resources={"cpu": 1, "memory": "1MB"}) == [1, 2]
