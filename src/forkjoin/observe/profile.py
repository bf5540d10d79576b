"""The caller side of the profiler: a session that workers report to, and the merged profile.

A ``ProfileSession`` owns a temporary folder; ``wrap(fn)`` gives the callable to send to the
workers (see ``sampler.py`` for the worker side and the flow). ``stop()`` asks every sampler for
its final totals, merges them per function across workers and removes the folder: the result is
a ``Profile``, which can say where the time went (by function, self and total; user code vs
forkjoin's own work), export speedscope JSON and render a flame graph (``flamegraph.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .sampler import REQUEST_FILE, SAMPLE_SECONDS, ProfiledCall

# How long ``stop()`` waits for the samplers' final totals. A sampler answers within a few
# sample periods; one whose worker holds the GIL in a long C call (or died) is reported from
# its last periodic flush instead, and named in ``Profile.incomplete``.
STOP_WAIT_SECONDS = 2.0
_POLL_SECONDS = 0.005  # the answers are files written by other processes: nothing to wait on

_PACKAGE_DIR = str(Path(__file__).resolve().parent.parent) + os.sep
_SAMPLER_FILE = str(Path(__file__).resolve().parent / "sampler.py")

USER = "user"
# forkjoin's own work in a worker, told apart by the names on the stack (innermost first).
_OVERHEAD_WORDS = (
    ("serialisation", ("pickle", "pack", "dumps", "loads", "encode", "decode", "copyreg")),
    ("transfer", ("send", "write", "shm", "segment", "buffer", "mmap")),
    ("waiting", ("recv", "read", "select", "poll", "wait", "sleep", "get", "next_message")),
)


@dataclass(frozen=True)
class FunctionTime:
    """One function's time across all workers: ``self_seconds`` with it innermost on the
    stack, ``total_seconds`` with it anywhere on the stack (counted once per sample)."""

    name: str
    file: str
    line: int
    self_seconds: float
    total_seconds: float
    kind: str  # "user", or "forkjoin: serialisation / transfer / waiting / other"


def wrapper_index(frames: list[tuple[str, str, int]]) -> int:
    """Where the profiled call's wrapper is on a stack (root first); -1 if not on it."""
    for index in range(len(frames) - 1, -1, -1):
        name, file, _ = frames[index]
        if file == _SAMPLER_FILE and name.endswith("__call__"):
            return index
    return -1


def classify(frames: list[tuple[str, str, int]]) -> str:
    """What a stack (root first) was doing: the user's function (anything under the profiled
    call, libraries it calls included) or forkjoin's own work around it."""
    if wrapper_index(frames) >= 0:
        return USER
    for name, file, _ in reversed(frames):
        text = f"{name} {os.path.basename(file)}".lower()
        for kind, words in _OVERHEAD_WORDS:
            if any(word in text for word in words):
                return f"forkjoin: {kind}"
        if file.startswith(_PACKAGE_DIR):
            break  # the innermost forkjoin frame named nothing known
    return "forkjoin: other"


@dataclass
class Profile:
    """Stacks sampled in every worker of a run, merged. Times are worker-seconds (wall time
    summed over workers), so shares are of all the time workers spent on the run."""

    frames: list[tuple[str, str, int]] = field(default_factory=list)  # name, file, line
    stacks: list[tuple[tuple[int, ...], float, int]] = field(default_factory=list)  # +worker
    workers: list[int] = field(default_factory=list)  # process ids, index = worker number
    calls: int = 0
    samples: int = 0
    incomplete: list[int] = field(default_factory=list)  # pids whose final totals were missed
    sampler_cpu_seconds: float = 0.0  # CPU time the samplers themselves used, all workers

    @classmethod
    def merge(cls, reports: Iterable[dict[str, Any]], request: str | None = None) -> Profile:
        """One profile from the samplers' reports; with ``request`` (the final one), a report
        that did not answer it and was not written between calls is named incomplete."""
        profile = cls()
        index: dict[tuple[str, str, int], int] = {}
        for report in sorted(reports, key=lambda r: r["pid"]):
            worker = len(profile.workers)
            profile.workers.append(report["pid"])
            profile.calls += report["calls"]
            profile.samples += report["samples"]
            profile.sampler_cpu_seconds += report.get("sampler_cpu", 0.0)
            if request is not None and report["answered"] != request and not report["idle"]:
                profile.incomplete.append(report["pid"])
            local = []
            for name, file, line in report["frames"]:
                key = (name, file, line)
                if key not in index:
                    index[key] = len(profile.frames)
                    profile.frames.append(key)
                local.append(index[key])
            for row, seconds in report["stacks"]:
                profile.stacks.append((tuple(local[i] for i in row), seconds, worker))
        return profile

    # -- questions -------------------------------------------------------------------------------

    @property
    def total_seconds(self) -> float:
        return sum(seconds for _, seconds, _ in self.stacks)

    def _kinds(self) -> list[str]:
        return [classify([self.frames[i] for i in stack]) for stack, _, _ in self.stacks]

    def seconds_by_kind(self) -> dict[str, float]:
        """Worker-seconds spent in user code and in each kind of forkjoin overhead."""
        out: dict[str, float] = defaultdict(float)
        for (_, seconds, _), kind in zip(self.stacks, self._kinds(), strict=True):
            out[kind] += seconds
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def functions(self) -> list[FunctionTime]:
        """Every sampled function, by total time (largest first)."""
        own: dict[int, float] = defaultdict(float)
        total: dict[int, float] = defaultdict(float)
        kind_seconds: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for (stack, seconds, _), kind in zip(self.stacks, self._kinds(), strict=True):
            if not stack:
                continue
            own[stack[-1]] += seconds
            for frame in set(stack):  # recursion counts once per sample
                total[frame] += seconds
                kind_seconds[frame][kind] += seconds
        rows = []
        for frame, seconds in total.items():
            name, file, line = self.frames[frame]
            kinds = kind_seconds[frame]
            kind = max(kinds, key=kinds.__getitem__)
            if kind == USER and file.startswith(_PACKAGE_DIR):
                kind = "forkjoin: other"  # forkjoin's frames that call the user's code
            rows.append(FunctionTime(name, file, line, own.get(frame, 0.0), seconds, kind))
        rows.sort(key=lambda row: (-row.total_seconds, row.name))
        return rows

    def top(self, n: int = 15, by: str = "self", kind: str | None = None) -> list[FunctionTime]:
        """The ``n`` functions with the most ``self`` or ``total`` time; ``kind="user"`` (or
        ``"forkjoin"``) keeps only user code (or forkjoin's own)."""
        rows = [r for r in self.functions() if kind is None or r.kind.startswith(kind)]
        key = (lambda r: -r.self_seconds) if by == "self" else (lambda r: -r.total_seconds)
        return sorted(rows, key=key)[:n]

    def share(self, name: str, of: str = "all") -> float:
        """The fraction of sampled time with a function called ``name`` (qualified name or
        its last part) on the stack; ``of="user"``: of the time in user code only."""
        kinds = self._kinds()
        hit = whole = 0.0
        for (stack, seconds, _), kind in zip(self.stacks, kinds, strict=True):
            if of == USER and kind != USER:
                continue
            whole += seconds
            names = {self.frames[i][0] for i in stack}
            if name in names or any(n.rsplit(".", 1)[-1] == name for n in names):
                hit += seconds
        return hit / whole if whole else 0.0

    # -- output ----------------------------------------------------------------------------------

    def as_dict(self, top: int = 20) -> dict[str, Any]:
        def rows(items: list[FunctionTime]) -> list[dict[str, Any]]:
            return [vars(item) for item in items]

        return {
            "workers": self.workers,
            "calls": self.calls,
            "samples": self.samples,
            "seconds": self.total_seconds,
            "seconds_by_kind": self.seconds_by_kind(),
            "top_self": rows(self.top(top, "self")),
            "top_total": rows(self.top(top, "total")),
            "incomplete": self.incomplete,
            "sampler_cpu_seconds": self.sampler_cpu_seconds,
        }

    def to_speedscope(self, name: str = "forkjoin profile") -> dict[str, Any]:
        """The profile in speedscope's file format: one sampled profile per worker."""
        by_worker: dict[int, list[tuple[tuple[int, ...], float]]] = defaultdict(list)
        for stack, seconds, worker in self.stacks:
            by_worker[worker].append((stack, seconds))
        profiles = []
        for worker, pid in enumerate(self.workers):
            rows = by_worker.get(worker, [])
            weights = [seconds for _, seconds in rows]
            profiles.append({
                "type": "sampled", "name": f"worker pid {pid}", "unit": "seconds",
                "startValue": 0, "endValue": sum(weights),
                "samples": [list(stack) for stack, _ in rows], "weights": weights,
            })  # fmt: skip
        return {
            "$schema": "https://www.speedscope.app/file-format-schema.json",
            "shared": {"frames": [{"name": n, "file": f, "line": ln} for n, f, ln in self.frames]},
            "profiles": profiles,
            "name": name,
            "activeProfileIndex": 0,
            "exporter": "forkjoin",
        }

    def write_speedscope(self, path: str | Path, name: str = "forkjoin profile") -> Path:
        """Write speedscope JSON (open it at speedscope's site or ``speedscope FILE``)."""
        path = Path(path)
        path.write_text(json.dumps(self.to_speedscope(name)))
        return path

    def render_text(self, n: int = 15) -> str:
        """The top functions by self time and the user/overhead split, as plain text."""
        whole = self.total_seconds or 1.0
        lines = [
            f"profile: {len(self.workers)} worker(s), {self.calls} calls, {self.samples} "
            f"samples, {self.total_seconds:.3f} worker-seconds (sampling used "
            f"{1e3 * self.sampler_cpu_seconds:.0f} ms of CPU)"
        ]
        for kind, seconds in self.seconds_by_kind().items():
            lines.append(f"  {kind:<26} {seconds:9.3f} s  {100 * seconds / whole:5.1f}%")
        lines.append(f"  {'self s':>9} {'total s':>9}  function")
        for row in self.top(n, "self"):
            where = f"{os.path.basename(row.file)}:{row.line}"
            lines.append(
                f"  {row.self_seconds:9.3f} {row.total_seconds:9.3f}  {row.name} ({where}) "
                f"[{row.kind}]"
            )
        return "\n".join(lines)


class ProfileSession:
    """One profiled run: hands out wrapped functions; collects and merges what workers saw."""

    def __init__(self, interval: float = SAMPLE_SECONDS) -> None:
        self.directory = tempfile.mkdtemp(prefix="forkjoin-profile-")
        self.interval = interval
        self._wrapped: dict[int, tuple[Callable[..., Any], ProfiledCall]] = {}
        self._requests = 0
        self.result: Profile | None = None

    def wrap(self, fn: Callable[..., Any]) -> ProfiledCall:
        """``fn`` as the workers should run it; the same wrapper for the same function, so a
        pool still sends it to each worker once."""
        if isinstance(fn, ProfiledCall) and fn.directory == self.directory:
            return fn
        known = self._wrapped.get(id(fn))
        if known is not None and known[0] is fn:
            return known[1]
        wrapper = ProfiledCall(fn, self.directory, self.interval)
        self._wrapped[id(fn)] = (fn, wrapper)
        return wrapper

    def snapshot(self, timeout: float = STOP_WAIT_SECONDS) -> Profile:
        """What the workers have seen so far (they keep sampling)."""
        if self.result is not None:
            return self.result
        return Profile.merge(self._ask(stop=False, timeout=timeout)[0])

    def stop(self, timeout: float = STOP_WAIT_SECONDS) -> Profile:
        """The final profile; samplers stop and the session's folder is removed."""
        if self.result is None:
            try:
                reports, request = self._ask(stop=True, timeout=timeout)
                self.result = Profile.merge(reports, request)
            finally:
                _remove(self.directory)
        return self.result

    def _ask(self, stop: bool, timeout: float) -> tuple[list[dict[str, Any]], str]:
        self._requests += 1
        request = f"{self._requests}{' stop' if stop else ''}"
        path = os.path.join(self.directory, REQUEST_FILE)
        with open(path + ".tmp", "w") as file:
            file.write(request)
        os.replace(path + ".tmp", path)
        deadline = time.monotonic() + timeout
        while True:
            reports = self._read()
            waiting = [r for r in reports if r["answered"] != request and _alive(r["pid"])]
            if not waiting or time.monotonic() >= deadline:
                return reports, request
            time.sleep(_POLL_SECONDS)

    def _read(self) -> list[dict[str, Any]]:
        reports = []
        for name in os.listdir(self.directory):
            if name.endswith(".json"):
                try:
                    reports.append(json.loads(Path(self.directory, name).read_text()))
                except (OSError, ValueError):  # replaced while read: read again next time
                    continue
        return reports


def _remove(directory: str, tries: int = 5) -> None:
    """Remove the session's folder. A sampler that missed the stop (its process busy) may
    still write one last file meanwhile: then the removal is tried again, a few times."""
    for _ in range(tries):
        shutil.rmtree(directory, ignore_errors=True)
        if not os.path.exists(directory):
            return
        time.sleep(_POLL_SECONDS)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
