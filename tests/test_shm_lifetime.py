"""Shared-memory segments over a pool's life: nothing is ever left behind, memory and file
descriptors are given back, and a too-small shared-memory directory is survived.

Segments are anonymous (memfd, or files unlinked the moment they are created in
``FORKJOIN_SHM_DIR``), so neither ``/dev/shm`` nor that directory may ever hold an entry: not
during a run, not after a normal exit, a task exception, a worker or a caller SIGKILLed. Every
scenario runs in a fresh interpreter (``tests/_shm_harness.py``, whose workers inherit its
environment), which reports what it saw to a JSON file; meanwhile this test polls the directories.
Scenarios run twice: segments as memfds ("memfd") and as files in a directory ("dir").

Where user namespaces allow it, the harness runs in a private mount namespace whose ``/dev/shm``
is a directory of the test's own (bind-mounted): any entry there is the harness's doing, whatever
else runs on the machine (joblib and loky fill the real ``/dev/shm`` with entries of their own).
Elsewhere the real ``/dev/shm`` is checked for names forkjoin or multiprocessing would use.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psutil
import pytest
from _shm_harness import segment_inodes
from helpers import LEAK_GRACE_SECONDS, pid_gone, wait_until

pytestmark = pytest.mark.timeout(60)

HARNESS = Path(__file__).with_name("_shm_harness.py")
MiB = 1024 * 1024
TMPFS_SIZE = 4 * MiB
# Longest a harness scenario may take (it normally takes about a second).
RUN_TIMEOUT = 30.0
# Workers notice their caller's death through the watchdog pipe within this long.
ORPHAN_SECONDS = 5.0
# Names in the real /dev/shm that would be ours (as in conftest.py), when it cannot be private.
OUR_SHM_PREFIXES = ("forkjoin", "fj", "psm_", "wnsm_", "sem.mp-")


# -- a private /dev/shm ----------------------------------------------------------------------------


def _mount_commands(dev_shm: Path, tmpfs: Path | None) -> str:
    script = f"mount --bind {shlex.quote(str(dev_shm))} /dev/shm && "
    if tmpfs is not None:
        script += f"mount -t tmpfs -o size=4m tmpfs {shlex.quote(str(tmpfs))} && "
    return script + 'exec "$@"'


@functools.cache
def private_mounts_work() -> bool:
    """Whether ``unshare -rm`` gives a process its own mounts here (user namespaces allowed, or
    root): then /dev/shm can be private and a tmpfs mounted without touching the machine's."""
    if not shutil.which("unshare"):
        return False
    with tempfile.TemporaryDirectory(prefix="shm-probe-") as root:
        dev_shm, tmpfs = Path(root, "dev-shm"), Path(root, "tmpfs")
        dev_shm.mkdir()
        tmpfs.mkdir()
        script = _mount_commands(dev_shm, tmpfs)
        try:
            probe = subprocess.run(
                ["unshare", "-rm", "sh", "-c", script, "sandbox", "touch", "/dev/shm/probe"],
                capture_output=True,
                timeout=10,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return probe.returncode == 0 and os.listdir(dev_shm) == ["probe"]


def real_dev_shm() -> set[str]:
    try:
        names = os.listdir("/dev/shm")
    except FileNotFoundError:
        return set()
    return {name for name in names if name.lower().startswith(OUR_SHM_PREFIXES)}


class Sandbox:
    """Where a harness runs: its /dev/shm (private if possible) and, maybe, a tiny tmpfs."""

    def __init__(self, root: Path) -> None:
        self.private = private_mounts_work()
        self.dev_shm: Path | None = None
        self.before: set[str] = set()
        if self.private:
            self.dev_shm = root / "dev-shm"
            self.dev_shm.mkdir()
        else:
            self.before = real_dev_shm()

    def prefix(self, tmpfs: Path | None = None) -> tuple[str, ...]:
        if not self.private:
            return ()
        assert self.dev_shm is not None
        return ("unshare", "-rm", "sh", "-c", _mount_commands(self.dev_shm, tmpfs), "sandbox")

    def watched(self) -> list[Path]:
        return [self.dev_shm] if self.dev_shm is not None else []

    def dev_shm_entries(self) -> list[str]:
        if self.dev_shm is not None:
            return sorted(os.listdir(self.dev_shm))
        return sorted(real_dev_shm() - self.before)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    """A sandbox; after the test, /dev/shm must hold nothing new."""
    box = Sandbox(tmp_path)
    yield box
    assert wait_until(lambda: not box.dev_shm_entries(), LEAK_GRACE_SECONDS), (
        f"/dev/shm entries left behind: {box.dev_shm_entries()}"
    )


@pytest.fixture(params=["memfd", "dir"])
def shm_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path | None:
    """None: segments are memfds. A directory: FORKJOIN_SHM_DIR for the harness."""
    if request.param == "memfd":
        return None
    directory = tmp_path / "shm"
    directory.mkdir()
    return directory


# -- running the harness ---------------------------------------------------------------------------


class Run:
    """A finished harness run: its report, its output, and what the test saw meanwhile."""

    def __init__(self, out: Path, returncode: int | None, seen: list[str]) -> None:
        self.returncode = returncode
        self.stdout = (out / "stdout.txt").read_text()
        self.stderr = (out / "stderr.txt").read_text()
        self.seen = seen  # every entry seen in a watched directory during the run
        report = out / "report.json"
        self.report = json.loads(report.read_text()) if report.exists() else None

    def describe(self) -> str:
        return f"rc={self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def harness_env(shm_dir: Path | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORKJOIN_")}
    if shm_dir is not None:
        env["FORKJOIN_SHM_DIR"] = str(shm_dir)
    env.update(extra)
    return env


def start(
    scenario: str, out: Path, env: dict[str, str], prefix: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    out.mkdir(exist_ok=True)
    with open(out / "stdout.txt", "wb") as stdout, open(out / "stderr.txt", "wb") as stderr:
        return subprocess.Popen(
            [*prefix, sys.executable, str(HARNESS), scenario, str(out)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )


def watch(
    proc: subprocess.Popen[bytes],
    directories: Sequence[Path],
    until: Callable[[], bool],
    timeout: float,
) -> list[str]:
    """Poll ``directories`` until ``until()``, the process ends or ``timeout``; every entry
    seen in them meanwhile."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        for directory in directories:
            seen += [f"{directory}/{name}" for name in os.listdir(directory)]
        if until() or proc.poll() is not None or time.monotonic() >= deadline:
            return sorted(set(seen))
        time.sleep(0.01)


def kill_tree(proc: subprocess.Popen[bytes], extra_pids: Sequence[int] = ()) -> None:
    """SIGKILL the harness, everything under it, and ``extra_pids``; reap the harness."""
    victims = []
    if proc.poll() is None:  # (once reaped, its pid may already be someone else's)
        try:
            victims = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        proc.kill()
    for victim in victims:
        try:
            victim.kill()
        except psutil.NoSuchProcess:
            pass
    for pid in extra_pids:
        if not pid_gone(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


def run_harness(
    scenario: str,
    tmp_path: Path,
    sandbox: Sandbox,
    shm_dir: Path | None,
    tmpfs: Path | None = None,
    **extra_env: str,
) -> Run:
    out = tmp_path / f"out-{scenario}"
    prefix = sandbox.prefix(tmpfs)
    proc = start(scenario, out, harness_env(shm_dir, **extra_env), prefix)
    watched = sandbox.watched() + ([shm_dir] if shm_dir is not None else [])
    try:
        seen = watch(proc, watched, lambda: False, RUN_TIMEOUT)
        if proc.poll() is None:
            kill_tree(proc)
            pytest.fail(f"{scenario} took over {RUN_TIMEOUT} s\n{Run(out, None, seen).describe()}")
        run = Run(out, proc.returncode, seen)
    finally:
        kill_tree(proc)
    assert run.returncode == 0 and run.report is not None, run.describe()
    return run


def assert_left_nothing(run: Run, shm_dir: Path | None) -> None:
    report = run.report
    assert run.seen == [], f"entries appeared during the run: {run.seen}"
    if shm_dir is not None:
        assert os.listdir(shm_dir) == []
        assert report["listing_after"] == []
    assert report["caller_segments_after"] == 0, "the caller still maps segments"
    assert report["workers_alive_after"] == [], "workers outlived the pool"


# -- nothing is left behind ------------------------------------------------------------------------


def test_normal_exit_moves_data_through_segments_and_leaves_nothing(tmp_path, sandbox, shm_dir):
    run = run_harness("normal", tmp_path, sandbox, shm_dir)
    report = run.report
    assert report["correct"], report
    assert report["storage_directory"] == (str(shm_dir) if shm_dir else None)
    for facts in report["worker_facts"]:
        # The argument is a view of the caller's segment, mapped in the worker...
        assert facts["segments"] >= 1, facts
        assert facts["arg_writeable"], "an unpickled argument must be writable (copy-on-write)"
        # ...and a segment in use has no name either.
        assert facts["listing"] == ([] if shm_dir else None), facts
    # The 16 MiB results alive in the caller are views of workers' segments, mapped here.
    assert report["result_bases"] == ["mmap"], report
    assert report["results_writeable"]
    assert report["caller_segments_with_results"] >= 2, report
    assert report["listing_with_results"] == ([] if shm_dir else None)
    assert_left_nothing(run, shm_dir)


def test_task_exception_with_big_argument_leaves_nothing(tmp_path, sandbox, shm_dir):
    run = run_harness("task_exception", tmp_path, sandbox, shm_dir)
    report = run.report
    assert report["error"] and report["error"].startswith("TaskError"), report
    assert "task failed holding 16777216 bytes" in report["error"]
    assert report["correct_after"]
    assert report["listing_during"] == ([] if shm_dir else None)
    assert_left_nothing(run, shm_dir)


def test_worker_sigkilled_holding_big_data_leaves_nothing(tmp_path, sandbox, shm_dir):
    run = run_harness("worker_killed", tmp_path, sandbox, shm_dir)
    report = run.report
    assert report["error"] and "WorkerCrashedError" in report["error"], report
    assert "SIGKILL" in report["error"]
    assert report["victim_alive"] == []
    # The result the dead worker had lent the caller stays readable: the mapping outlives it.
    assert report["caller_segments_before"] >= 1
    assert report["lent_intact"]
    assert report["correct_after"], "the replacement worker moves big data correctly"
    assert report["listing_during"] == ([] if shm_dir else None)
    assert_left_nothing(run, shm_dir)


def test_caller_raising_mid_map_in_a_pool_block_leaves_nothing(tmp_path, sandbox, shm_dir):
    run = run_harness("parent_raises", tmp_path, sandbox, shm_dir)
    report = run.report
    assert report["raised"]
    assert report["caller_segments_during"] >= 1, "a big result was alive when it raised"
    assert report["listing_during"] == ([] if shm_dir else None)
    assert_left_nothing(run, shm_dir)


def test_caller_sigkilled_mid_map_leaves_no_workers_and_nothing_in_shm(tmp_path, sandbox, shm_dir):
    out = tmp_path / "out"
    proc = start("parent_killed", out, harness_env(shm_dir), sandbox.prefix())
    workers: list[int] = []
    try:
        ready = out / "ready.json"
        watched = sandbox.watched() + ([shm_dir] if shm_dir is not None else [])
        seen = watch(proc, watched, ready.exists, RUN_TIMEOUT)
        if not ready.exists():
            kill_tree(proc)
            pytest.fail(f"the caller never got ready\n{Run(out, proc.returncode, seen).describe()}")
        info = json.loads(ready.read_text())
        workers = info["workers"]
        assert len(workers) == 2 and not any(pid_gone(p) for p in workers), info
        assert info["results_ok"]
        assert info["caller_segments"] >= 2, "two big results alive in the caller"
        for pid in workers:  # each worker maps the big argument it is holding
            assert segment_inodes(pid, str(shm_dir) if shm_dir else None), pid
        if shm_dir is not None:
            assert os.listdir(shm_dir) == []
        assert seen == []

        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        start_time = time.monotonic()
        gone = wait_until(lambda: all(pid_gone(p) for p in workers), ORPHAN_SECONDS)
        assert gone, (
            f"workers still running {time.monotonic() - start_time:.1f} s after their caller "
            f"was SIGKILLed: {[p for p in workers if not pid_gone(p)]}"
        )
        assert watch(proc, watched, lambda: True, 0) == []
    finally:
        kill_tree(proc, workers)


# -- memory is given back --------------------------------------------------------------------------


def test_segments_are_unmapped_once_results_are_dropped_and_the_pool_shuts_down(
    tmp_path, sandbox, shm_dir
):
    report = run_harness("memory_freed", tmp_path, sandbox, shm_dir).report
    assert report["start"] == 0
    assert report["results_ok"] and report["both_ok"]
    assert report["with_results"] >= 1, "the big results came through segments"
    # Results came back for small arguments: the caller had no segment of its own to keep.
    assert report["results_dropped"] == 0, report
    # Only the pooled argument segments (4 arrays sent) stay mapped until shutdown.
    assert report["before_shutdown"] <= 4, report
    assert report["after_shutdown"] == 0, report


# -- fd hygiene ------------------------------------------------------------------------------------


def test_open_fds_return_to_their_starting_count(tmp_path, sandbox, shm_dir):
    report = run_harness("fd_hygiene", tmp_path, sandbox, shm_dir).report
    assert report["ok"]
    assert report["during"] > report["start"], "a running pool holds some fds"
    assert report["end"] <= report["start"] + 2, report


# -- a shared-memory directory too small for the data ----------------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path: Path, sandbox: Sandbox) -> Iterator[Path]:
    """An empty directory where the harness finds a 4 MiB tmpfs: mounted in its private mount
    namespace, or else (as root) mounted here and unmounted afterwards."""
    directory = tmp_path / "tmpfs"
    directory.mkdir()
    if sandbox.private:
        yield directory
        return
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("cannot mount a tmpfs here (no user namespaces, not root)")
    mount = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(directory)]
    if subprocess.run(mount, capture_output=True, timeout=10).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (mount failed)")
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], timeout=10).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], timeout=10)


def test_data_bigger_than_the_shm_directory_falls_back_with_a_warning(
    tmp_path, sandbox, tiny_tmpfs
):
    run = run_harness("tmpfs_overflow", tmp_path, sandbox, tiny_tmpfs, tiny_tmpfs)
    report = run.report
    assert report["tmpfs_before"] == {"size": TMPFS_SIZE, "free": TMPFS_SIZE}, "not the tmpfs"
    assert report["correct"], run.describe()
    assert report["pids_before"] == report["pids_after"], "a worker died (SIGBUS?)"
    assert "SIGBUS" not in run.stderr and "Fatal Python error" not in run.stderr, run.stderr
    assert f"forkjoin: {tiny_tmpfs} has no room" in run.stderr, run.stderr
    assert "RuntimeWarning" in run.stderr
    assert report["listing_during"] == [] and report["listing_after"] == []
    assert report["tmpfs_after"] == report["tmpfs_before"], "tmpfs space not given back"
    assert run.seen == []


def test_data_that_fits_the_shm_directory_goes_through_it_without_warning(
    tmp_path, sandbox, tiny_tmpfs
):
    run = run_harness(
        "tmpfs_fits",
        tmp_path,
        sandbox,
        tiny_tmpfs,
        tiny_tmpfs,
        FORKJOIN_OUT_OF_BAND_MIN_BYTES="65536",
    )
    report = run.report
    assert report["tmpfs_before"] == {"size": TMPFS_SIZE, "free": TMPFS_SIZE}, "not the tmpfs"
    for round_ in report["rounds"]:
        assert round_["correct"], report
        # The 1 MiB argument and result live in the tmpfs, as unlinked files.
        assert round_["caller_segments"] >= 1, report
        assert round_["tmpfs"]["free"] < TMPFS_SIZE, report
        assert round_["listing"] == []
    assert "has no room" not in run.stderr and "RuntimeWarning" not in run.stderr, run.stderr
    assert report["listing_after"] == []
    assert report["tmpfs_after"] == report["tmpfs_before"], "tmpfs space not given back"
    assert run.seen == []


def test_out_of_band_threshold_follows_the_environment(tmp_path, sandbox):
    """Read by the caller and by its workers (which inherit the environment)."""
    run = run_harness(
        "threshold_env", tmp_path, sandbox, None, FORKJOIN_OUT_OF_BAND_MIN_BYTES="65536"
    )
    report = run.report
    assert report["correct"]
    assert report["caller_segments"] >= 1, "the 128 kB result did not come through a segment"
