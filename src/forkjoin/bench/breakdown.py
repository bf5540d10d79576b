"""Where the time of a parallel run went, from the engine's event log.

Each worker is a *lane*; over the run's window ``[t0, t1]`` every instant of every lane is given
exactly one phase, by priority::

    compute     a task of this lane was running            [start, end]
    startup     the lane's worker process was starting     [spawned, ready]
    caller      the caller ran its own serial code          (scaling's before/after phases)
    queue_wait  a task for this lane was submitted, not yet started: in the backend's queue,
                on the wire, or being unpickled in the worker   [submit, start]
    transfer    a result of this lane was on its way back, not yet taken up by the
                caller                                      [end, merge]
    merge       the caller was merging after the last result   [last merge, t1]
    idle        none of these: the lane had nothing to do (the caller did not feed it, or
                the job's tail: other lanes were still busy)

``serialisation`` (pickling in the caller before submit, unpickling results) has no event of
its own: it is estimated from a measured cost per item (``scaling`` pickles a sample) or per
byte, and taken out of the lane's waiting phases (idle, queue_wait, transfer), since that is
when a lane waits for the caller to pickle. Phase seconds are lane-seconds divided by the
number of lanes, so the phases add up to the window's wall time.

Worker ids a backend reuses or replaces (a killed worker's successor gets a new id) are packed
into lanes by their lifetimes, so a pool of ``n`` workers is drawn as ``n`` lanes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

PHASES = (
    "startup", "serialisation", "transfer", "queue_wait", "compute", "merge", "caller", "idle",
)  # fmt: skip

# Serialisation speed assumed when nothing better was measured (pickle of numeric buffers runs at
# a few GB/s; of small Python objects much slower): a low estimate rather than a guess of overhead.
DEFAULT_PICKLE_BYTES_PER_SECOND = 1e9

Interval = tuple[float, float]


def _union(intervals: Iterable[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for start, end in sorted(intervals):
        if end <= start:
            continue
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def _minus(a: list[Interval], b: list[Interval]) -> list[Interval]:
    """``a`` minus ``b``, both sorted and disjoint."""
    out: list[Interval] = []
    j = 0
    for start, end in a:
        cur = start
        while j < len(b) and b[j][1] <= cur:
            j += 1
        k = j
        while k < len(b) and b[k][0] < end:
            if b[k][0] > cur:
                out.append((cur, b[k][0]))
            cur = max(cur, b[k][1])
            k += 1
        if cur < end:
            out.append((cur, end))
    return out


def _length(intervals: list[Interval]) -> float:
    return sum(e - s for s, e in intervals)


def _clip(intervals: Iterable[Interval], t0: float, t1: float) -> list[Interval]:
    return [(max(s, t0), min(e, t1)) for s, e in intervals if e > t0 and s < t1]


@dataclass
class TaskSpan:
    """One task on the timeline (for the Gantt chart)."""

    lane: int
    worker: int
    submit: float
    start: float
    end: float
    merge: float
    items: int
    status: int  # task.Status value: 0 done, others failed/crashed


@dataclass
class Breakdown:
    """Seconds of wall time per phase (they add up to ``wall_seconds``), plus the timeline."""

    wall_seconds: float
    lanes: int
    phases: dict[str, float]
    t0: float
    t1: float
    tasks: int = 0
    items: int = 0
    failed_tasks: int = 0
    mean_task_seconds: float = 0.0
    mean_queue_seconds: float = 0.0
    p95_queue_seconds: float = 0.0
    startup_seconds: float = 0.0  # mean start-up of the workers started in the window
    records_dropped: bool = False
    measured_seconds: float | None = None  # the caller's stopwatch around the run, if known
    spans: list[TaskSpan] = field(default_factory=list)
    caller_intervals: list[Interval] = field(default_factory=list)
    startup_spans: list[tuple[int, float, float]] = field(default_factory=list)  # lane, from, to
    lane_phases: list[dict[str, float]] = field(default_factory=list)
    worker_events: list[tuple[float, str, int, int]] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.phases.values())

    def share(self, phase: str) -> float:
        return self.phases.get(phase, 0.0) / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def overhead_share(self) -> float:
        """Share of lane time not spent computing, starting, or in the caller's own code."""
        busy = ("compute", "caller", "idle")
        over = sum(v for k, v in self.phases.items() if k not in busy)
        return over / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def as_dict(self, *, timeline: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "wall_seconds": self.wall_seconds,
            "measured_seconds": self.measured_seconds,
            "lanes": self.lanes,
            "phases": dict(self.phases),
            "shares": {k: self.share(k) for k in self.phases},
            "tasks": self.tasks,
            "items": self.items,
            "failed_tasks": self.failed_tasks,
            "mean_task_seconds": self.mean_task_seconds,
            "mean_queue_seconds": self.mean_queue_seconds,
            "p95_queue_seconds": self.p95_queue_seconds,
            "startup_seconds": self.startup_seconds,
            "records_dropped": self.records_dropped,
            "lane_phases": self.lane_phases,
        }
        if timeline:
            out["timeline"] = [
                {
                    "lane": s.lane, "worker": s.worker, "submit": s.submit - self.t0,
                    "start": s.start - self.t0, "end": s.end - self.t0,
                    "merge": s.merge - self.t0, "items": s.items, "status": s.status,
                }
                for s in self.spans
            ]  # fmt: skip
        return out


def _lanes_for(
    worker_ids: set[int],
    lifetimes: dict[int, Interval],
    workers: int,
) -> dict[int, int]:
    """Pack worker ids into lanes by lifetime (greedy interval colouring)."""
    order = sorted(worker_ids, key=lambda w: (lifetimes.get(w, (math.inf, math.inf))[0], w))
    lane_end: list[float] = []
    lane_of: dict[int, int] = {}
    for worker in order:
        start, end = lifetimes.get(worker, (-math.inf, math.inf))
        free = [i for i, e in enumerate(lane_end) if e <= start]
        if free:
            lane = free[0]
        elif len(lane_end) < max(1, workers):
            lane = len(lane_end)
            lane_end.append(-math.inf)
        else:  # overlapping lifetimes (a replacement started before the death was noticed)
            lane = min(range(len(lane_end)), key=lane_end.__getitem__)
        lane_end[lane] = max(lane_end[lane], end)
        lane_of[worker] = lane
    return lane_of


def compute_breakdown(
    task_records: Sequence[Any],
    worker_records: Sequence[Any] = (),
    *,
    workers: int | None = None,
    t0: float | None = None,
    t1: float | None = None,
    caller_intervals: Sequence[Interval] = (),
    last_merge: float | None = None,
    serialisation_seconds_per_item: float | None = None,
    pickle_bytes_per_second: float = DEFAULT_PICKLE_BYTES_PER_SECOND,
    max_records: int | None = None,
) -> Breakdown:
    """The phase breakdown of the tasks in ``task_records`` (``EventLog.task_records()``).

    ``t0``/``t1``: the run's window (default: first submit to last merge). ``workers``: lanes
    (default: the distinct workers seen). ``caller_intervals``: spans when the caller ran its
    own serial code. ``last_merge``: when the engine handed over the last result (default: the
    last record's merge time); time after it, up to ``t1``, is ``merge``.
    """
    records = [
        r for r in task_records
        if (t0 is None or r.merge_time >= t0) and (t1 is None or r.submit_time <= t1)
    ]  # fmt: skip
    if t0 is None:
        t0 = min((r.submit_time for r in records), default=0.0)
    if t1 is None:
        t1 = max((r.merge_time for r in records), default=t0)
    wall = max(t1 - t0, 0.0)
    spawned: dict[int, float] = {}
    exited: dict[int, float] = {}
    worker_events = []
    startups = []
    for w in worker_records:
        if w.event == "start":
            spawned[w.worker] = w.time - max(w.detail, 0.0)
            if t0 <= w.time <= t1:
                startups.append(w.detail)
        else:
            exited[w.worker] = w.time
        if t0 - 1.0 <= w.time <= t1 + 1.0:
            worker_events.append((w.time - t0, w.event, w.worker, w.pid))
    ids = {r.worker for r in records if r.worker >= 0}
    ids |= {w for w, t in spawned.items() if t < t1 and exited.get(w, math.inf) > t0}
    lifetimes: dict[int, Interval] = {}
    for w in ids:
        ran = [r for r in records if r.worker == w]
        start = spawned.get(w, min((r.submit_time for r in ran), default=t0))
        end = exited.get(w, max((r.merge_time for r in ran), default=t1))
        lifetimes[w] = (start, end if w in exited else math.inf)
    lanes_wanted = workers if workers is not None else max(1, len(ids))
    lane_of = _lanes_for(ids, lifetimes, lanes_wanted)
    n_lanes = max(lanes_wanted, max(lane_of.values(), default=-1) + 1, 1)

    by_lane: list[dict[str, list[Interval]]] = [
        {"compute": [], "startup": [], "queue_wait": [], "transfer": []} for _ in range(n_lanes)
    ]
    spans = []
    for r in records:
        lane = lane_of.get(r.worker, 0)
        kinds = by_lane[lane]
        kinds["compute"].append((r.start_time, r.end_time))
        kinds["queue_wait"].append((r.submit_time, r.start_time))
        kinds["transfer"].append((r.end_time, r.merge_time))
        spans.append(
            TaskSpan(lane, r.worker, r.submit_time, r.start_time, r.end_time, r.merge_time,
                     r.items, r.status)  # fmt: skip
        )
    for w, start in spawned.items():
        if w in lane_of:
            ready = start + next(
                (x.detail for x in worker_records if x.worker == w and x.event == "start"), 0.0
            )
            by_lane[lane_of[w]]["startup"].append((start, ready))
    if last_merge is None:
        last_merge = max((r.merge_time for r in records), default=t1)
    caller = _union(_clip(caller_intervals, t0, t1))
    merge_tail = _clip([(last_merge, t1)], t0, t1)

    # serialisation: the caller's pickling of items and unpickling of results
    n_items = sum(r.items for r in records)
    if serialisation_seconds_per_item is not None:
        serial_cost = serialisation_seconds_per_item * n_items
    else:
        moved = sum(r.bytes_sent + r.bytes_received for r in records)
        serial_cost = moved / pickle_bytes_per_second

    totals = dict.fromkeys(PHASES, 0.0)
    lane_phases = []
    window = [(t0, t1)] if wall > 0 else []
    for kinds in by_lane:
        covered: list[Interval] = []
        mine = dict.fromkeys(PHASES, 0.0)
        ordered = [
            ("compute", _union(_clip(kinds["compute"], t0, t1))),
            ("startup", _union(_clip(kinds["startup"], t0, t1))),
            ("caller", caller),
            ("queue_wait", _union(_clip(kinds["queue_wait"], t0, t1))),
            ("transfer", _union(_clip(kinds["transfer"], t0, t1))),
            ("merge", merge_tail),
        ]
        for name, intervals in ordered:
            fresh = _minus(intervals, covered)
            mine[name] += _length(fresh)
            covered = _union(covered + fresh)
        mine["idle"] = _length(_minus(window, covered))
        # take the serialisation estimate out of the phases in which a lane waits
        remaining = serial_cost
        for name in ("idle", "queue_wait", "transfer"):
            take = min(remaining, mine[name])
            mine[name] -= take
            mine["serialisation"] += take
            remaining -= take
        lane_phases.append(mine)
        for name, seconds in mine.items():
            totals[name] += seconds
    phases = {name: seconds / n_lanes for name, seconds in totals.items()}
    queue = sorted(max(0.0, r.start_time - r.submit_time) for r in records)
    durations = [r.end_time - r.start_time for r in records]
    return Breakdown(
        wall_seconds=wall,
        lanes=n_lanes,
        phases=phases,
        t0=t0,
        t1=t1,
        tasks=len(records),
        items=n_items,
        failed_tasks=sum(1 for r in records if r.status != 0),
        mean_task_seconds=sum(durations) / len(durations) if durations else 0.0,
        mean_queue_seconds=sum(queue) / len(queue) if queue else 0.0,
        p95_queue_seconds=queue[int(0.95 * (len(queue) - 1))] if queue else 0.0,
        startup_seconds=sum(startups) / len(startups) if startups else 0.0,
        records_dropped=max_records is not None and len(task_records) >= max_records,
        spans=spans,
        lane_phases=lane_phases,
        worker_events=worker_events,
        caller_intervals=caller,
        startup_spans=[
            (lane, a, b)
            for lane, kinds in enumerate(by_lane)
            for a, b in _clip(kinds["startup"], t0, t1)
        ],
    )


def breakdown_of_events(events: Any, **kwargs: Any) -> Breakdown:
    """``compute_breakdown`` over an ``EventLog`` (a pool's ``pool.events``)."""
    from ..engine.events import MAX_TASK_RECORDS

    records = events.task_records()
    return compute_breakdown(
        records,
        events.worker_records(),
        max_records=events.tasks.maxlen or MAX_TASK_RECORDS,
        **kwargs,
    )
