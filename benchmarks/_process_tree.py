"""Run one contender in a fresh interpreter and measure the peak RSS of its whole process tree
(its workers, actors, Ray raylets... included): shared by bench_data and bench_inference.

The tree is sampled every RSS_SAMPLE_SECONDS from a thread; when the command ends (or times
out) its process group is killed, so nothing a contender started outlives its row.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Peak RSS sampling period: each sample walks /proc (psutil children), ~5 ms of CPU on a busy
# machine; at 0.1 s it costs the contenders ~5% of one core instead of ~25% at 0.02 s.
RSS_SAMPLE_SECONDS = 0.1


def tree_rss(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants, in bytes (0 once it is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int  # bytes, the whole tree's
    timed_out: bool

    def json_line(self) -> str | None:
        """The last line of stdout that is a JSON object (a contender's result), if any."""
        lines = [line for line in self.stdout.splitlines() if line.startswith("{")]
        return lines[-1] if lines else None

    def error(self) -> list[str]:
        """The last lines of what the contender said, for a failed row."""
        if self.timed_out:
            return [self.stderr]
        return (self.stderr or self.stdout).strip().splitlines()[-3:] or ["failed"]


def run_sampled(command: Sequence[str], env: Mapping[str, str], timeout: float) -> Finished:
    """Run ``command`` in its own session, sampling its tree's RSS; kill the group after."""
    proc = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(env), start_new_session=True)  # fmt: skip
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(RSS_SAMPLE_SECONDS):
            peak = max(peak, tree_rss(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stdout, stderr, timed_out = "", f"timed out after {timeout:.0f} s", True
    finally:
        done.set()
        sampler.join()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything the contender left behind
        except ProcessLookupError:
            pass
        proc.wait()
    return Finished(proc.returncode, stdout, stderr, peak, timed_out)
