"""forkjoin stress / fj.testing.chaos: every fault kind on the process backend ends with nothing
lost, duplicated or leaked; a backend that drops a result, or never answers, makes the run
fail (the check can fail); forkjoin check / assert_parallel_safe find unsafe functions."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

import forkjoin.testing as fjt
from forkjoin.backends import base
from forkjoin.backends.threads import ThreadBackend
from forkjoin.bench.stress import stress
from forkjoin.cli import main
from forkjoin.core.task import Status

ALL_FAULTS = "kill=0.002,hang=0.001,raise=0.005,unpicklable=0.005,memory=0.001"


class DroppingBackend(ThreadBackend):
    """A broken backend (test double): the first task's last result never reaches the caller."""

    name = "dropping"

    def submit(self, task, done):  # type: ignore[no-untyped-def]
        def drop_one(t, outcome):  # type: ignore[no-untyped-def]
            if t.first_index == 0 and outcome.status is Status.DONE and outcome.values:
                outcome.values.pop()
            done(t, outcome)

        super().submit(task, drop_one)


class SilentBackend(ThreadBackend):
    """A broken backend (test double): never reports the task holding item 10."""

    name = "silent"

    def submit(self, task, done):  # type: ignore[no-untyped-def]
        first, last = task.first_index, task.first_index + len(task.items) - 1
        if first <= 10 <= last:
            return
        super().submit(task, done)


@pytest.fixture
def broken_backends():
    base.register_backend("dropping-test", __name__, "DroppingBackend")
    base.register_backend("silent-test", __name__, "SilentBackend")
    yield
    base._REGISTRY.pop("dropping-test", None)
    base._REGISTRY.pop("silent-test", None)


def test_stress_command_with_every_fault_kind_loses_nothing(tmp_path: Path) -> None:
    # timeout 1 s, not less: the memory fault writes ~360 MB, which on a busy 2-core machine
    # takes ~0.5 s to become resident; below that, its timeout can fire before the memory
    # watchdog sees the limit crossed, and a TaskTimeoutError is then the right answer
    out, err = io.StringIO(), io.StringIO()
    report_path = tmp_path / "stress.json"
    code = main(
        ["stress", "--tasks", "2000", "--workers", "2", "--faults", ALL_FAULTS,
         "--timeout", "1.0", "--memory-limit", "200MB", "--time-limit", "120",
         "--json", str(report_path)],
        stdout=out, stderr=err,
    )  # fmt: skip
    assert code == 0, out.getvalue() + err.getvalue()
    data = json.loads(report_path.read_text())
    injected = data["injected"]
    assert injected == {"kill": 4, "hang": 2, "raise": 10, "unpicklable": 10, "memory": 2}
    assert data["lost"] == 0 and data["duplicated"] == 0 and data["wrong"] == 0
    assert data["unexpected_failures"] == 0
    assert data["orphans"] == [] and data["leaked_shm"] == []
    # hangs, raises, unpicklable results and memory hogs fail as they should; kills are retried
    assert data["failed_as_expected"] == 2 + 10 + 10 + 2
    assert data["done"] == 2000 - data["failed_as_expected"]
    assert data["worker_crashes"] >= 4 and data["timeouts"] == 2
    # each kill, timeout and memory stop ends a worker; the replacements (the last one may
    # still be starting when the run ends) carry on
    assert data["workers_started"] >= 4 + 2 + 2 - 1
    assert data["skipped"] == {}
    assert "verdict" in out.getvalue() and "OK" in out.getvalue()


def test_stress_fails_on_a_backend_that_drops_a_result(broken_backends) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["stress", "--backend", "dropping-test", "--tasks", "500", "--no-fault-free"],
        stdout=out, stderr=err,
    )  # fmt: skip
    assert code == 1, out.getvalue()
    assert "FAILED" in err.getvalue()
    text = out.getvalue()
    assert "lost (must be 0)                  1" in text
    # and the kill fault is skipped, not run, where a SIGKILL would hit the caller
    report = stress(backend="dropping-test", tasks=200, rates={"kill": 0.01, "raise": 0.01},
                    fault_free=False)  # fmt: skip
    assert "kill" in report.skipped and report.lost == 1 and not report.ok


def test_stress_is_bounded_when_a_backend_never_answers(broken_backends) -> None:
    report = stress(backend="silent-test", tasks=100, chunksize=1, time_limit=2.0,
                    fault_free=False)  # fmt: skip
    assert report.timed_out and not report.ok
    assert report.lost >= 1
    assert report.seconds < 10


def test_stress_cli_survives_workers_killed_from_outside() -> None:
    # in a child process: the run SIGKILLs workers, and its exit status is what a CI job sees
    proc = subprocess.run(
        [sys.executable, "-m", "forkjoin", "stress", "--tasks", "100000", "--kill-every",
         "0.3", "--retries", "10", "--time-limit", "60"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "lost (must be 0)                  0" in proc.stdout
    killed = int(proc.stdout.split("workers killed from outside")[1].split()[0])
    assert killed >= 1


def scaled(x: int) -> int:
    return x * 3


def test_chaos_on_the_payload_workload_and_on_threads() -> None:
    report = fjt.chaos(workload="payload", tasks=300, payload_size=1 << 20,
                       rates={"raise": 0.02, "kill": 0.01}, workers=2)  # fmt: skip
    assert report.ok and report.failed_as_expected == 6 and report.done == 294
    report = fjt.chaos(scaled, list(range(500)), backend="threads",
                       rates={"raise": 0.02, "kill": 0.01, "unpicklable": 0.02})  # fmt: skip
    assert report.ok and "kill" in report.skipped
    # threads pickle nothing: the unpicklable object simply comes back
    assert report.failed_as_expected == 10 + 10


_calls = 0
SETTINGS = {"scale": 1}


def pure(x: int) -> int:
    return x * x


def counting(x: int) -> int:
    global _calls
    _calls += 1
    return x + _calls


def configured(x: int) -> int:
    return x * SETTINGS["scale"]


def test_assert_parallel_safe_finds_each_kind_of_dependence() -> None:
    report = fjt.assert_parallel_safe(pure, range(30), workers=(2,), chunksizes=(1, "auto"))
    assert report.safe and len(report.runs) == 5
    with pytest.raises(AssertionError, match="state kept between calls"):
        fjt.assert_parallel_safe(counting, range(30), workers=(2,), chunksizes=(1,))
    SETTINGS["scale"] = 2  # set in the caller only: workers import the module afresh
    try:
        with pytest.raises(AssertionError, match="per-process global state"):
            fjt.assert_parallel_safe(configured, range(30), workers=(2,), chunksizes=(4,))
    finally:
        SETTINGS["scale"] = 1


def test_check_command(tmp_path: Path) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text("".join(f"{i}\n" for i in range(20)))
    out, err = io.StringIO(), io.StringIO()
    code = main(["check", "test_stress:pure", "--input", str(items), "--workers", "2",
                 "--chunksizes", "1,auto"], stdout=out, stderr=err)  # fmt: skip
    assert code == 0, err.getvalue()
    assert "parallel safe" in out.getvalue()
    out = io.StringIO()
    code = main(["check", "test_stress:counting", "--items", "20", "--workers", "2",
                 "--chunksizes", "3"], stdout=out, stderr=err)  # fmt: skip
    assert code == 1
    assert "NOT parallel safe" in out.getvalue()
