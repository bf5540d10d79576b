"""forkjoin's zero-copy data plane against its peers, side by side in one run.

    python benchmarks/bench_dataplane.py [--quick] [--json PATH] [--only KEYS] [--tools TOOLS]
                                         [--broadcast-bytes SIZE] [--threshold] [--check]

Three figures on warm pools of 2 workers each, for forkjoin, concurrent.futures'
ProcessPoolExecutor, multiprocessing.Pool, joblib (loky, auto memmapping) and Ray (local):

    send       64 tasks each receive a 16 MiB float64 array, return its sum     GiB/s   best of N
    return     64 tasks each return a new 16 MiB array, the caller reads one    GiB/s   best of N
    broadcast  64 tasks each sum a slice of one 1 GiB array                     s       best of N

plus peak memory (RSS and PSS summed over the caller and the contender's processes) for every
row, and the bytes forkjoin copied (``pool.stats()``) for the broadcast. ``--threshold`` (also in
the default run) sweeps ``FORKJOIN_OUT_OF_BAND_MIN_BYTES`` against payload sizes, a fresh
interpreter per threshold, and names the smallest payload where shared memory beats the socket.

Goals from the issue are printed as PASS/MISS next to the numbers; a miss does not change the exit
status unless ``--check`` is given.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import platform
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # the helpers below, and the workloads workers import by name

from _dataplane_sections import (  # noqa: E402
    FULL,
    QUICK,
    TOOLS,
    Contenders,
    Settings,
    bench_broadcast,
    bench_return,
    bench_send,
    format_bytes,
    start_contenders,
    stop_contenders,
)
from _dataplane_threshold import INLINE, sweep  # noqa: E402
from _harness import WORKERS, Clock, Log  # noqa: E402
from _report import (  # noqa: E402
    Goal,
    PlainConsole,
    Section,
    footer,
    make_console,
    plain_table,
    to_json,
)

DEFAULT_JSON = HERE / "results" / "bench_dataplane.json"
THRESHOLD_JSON = HERE / "results" / "bench_dataplane_threshold.json"

# The goals, from the issue that asked for this benchmark.
SEND_VS_RAY_GOAL = 3.0  # send GiB/s: forkjoin >= 3x Ray
SEND_VS_JOBLIB_GOAL = 2.5  # send GiB/s: forkjoin >= 2.5x joblib
RETURN_VS_RAY_GOAL = 4.0  # return GiB/s: forkjoin >= 4x Ray
BROADCAST_COPIES_GOAL = 1.01  # fj.shared: one copy of the object for all tasks, not one each

SECTIONS = ("send", "return", "broadcast", "threshold")
POOL_SECTIONS = ("send", "return", "broadcast")


# -- goals ---------------------------------------------------------------------------------------


def find_row(section: Section, prefix: str) -> Any:
    return next((row for row in section.rows if row.name.startswith(prefix)), None)


def evaluate_goals(sections: dict[str, Section]) -> list[Goal]:
    """The issue's goals, for the sections that ran (n/a where a contender did not run)."""
    goals: list[Goal] = []

    def ratio_goal(key: str, prefix: str, label: str, target: float) -> None:
        section = sections[key]
        ours = next((r for r in section.rows if r.name == section.reference), None)
        peer = find_row(section, prefix)
        text = f"{key}: {section.reference} GiB/s vs {peer.name if peer else label}"
        if ours is None or peer is None:
            goals.append(Goal(key, text, target, True, "x", "best", None, None))
            return
        by_median = statistics.median(ours.runs) / statistics.median(peer.runs)
        goals.append(Goal(key, text, target, True, "x", "best", section.advantage(peer), by_median))

    if "send" in sections:
        ratio_goal("send", "Ray", "Ray", SEND_VS_RAY_GOAL)
        ratio_goal("send", "joblib", "joblib", SEND_VS_JOBLIB_GOAL)
    if "return" in sections:
        ratio_goal("return", "Ray", "Ray", RETURN_VS_RAY_GOAL)
    if "broadcast" in sections:
        section = sections["broadcast"]
        tasks = section.params["tasks"]
        text = f"broadcast: fj.shared copies of the object for {tasks} tasks (stats)"
        row = next((r for r in section.rows if r.name == section.reference), None)
        copied = row.extra.get("bytes_copied") if row else None
        if copied:
            size = section.params["object_bytes"]
            best, median = min(copied) / size, statistics.median(copied) / size
        else:
            best = median = None
        goals.append(
            Goal("broadcast", text, BROADCAST_COPIES_GOAL, False, " copies", "best", best, median)
        )
    return goals


# -- output --------------------------------------------------------------------------------------


def emit(console: Any, title: str, headers: list[str], rows: list[list[str]], right: set[int]):
    """A table, rich if the console is rich's (the same scheme as ``_report.render``)."""
    if isinstance(console, PlainConsole):
        console.print(plain_table(title, headers, rows) + "\n")
        return
    from rich.table import Table

    console.print(title)  # above the table, not wrapped to the table's width
    table = Table()
    for i, header in enumerate(headers):
        table.add_column(header, justify="right" if i in right else "left")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def show_memory(peak: int | None, rise: int | None) -> str:
    """Peak, and the most a run rose over the tree at rest just before it."""
    if peak is None:
        return "-"
    return f"{peak / 2**30:.2f}" + ("" if rise is None else f" (+{rise / 2**30:.2f})")


def render_section(section: Section, console: Any) -> None:
    broadcast = section.key == "broadcast"
    rows = []
    for row in section.rows:
        adv = section.advantage(row)
        extra = row.extra
        cells = [row.name, f"{row.value:.2f}", f"{extra['median']:.2f}"]
        cells.append("-" if adv is None else f"{adv:.2f}x")
        if broadcast:
            copies = extra.get("copies")
            source = "" if extra.get("copies_source") == "pool.stats()" else " (design)"
            cells.append("-" if copies is None else f"{copies:.2f}{source}")
        cells.append(show_memory(extra.get("peak_rss"), extra.get("rise_rss")))
        cells.append(show_memory(extra.get("peak_pss"), extra.get("rise_pss")))
        cells.append(row.detail)
        rows.append(cells)
    unit = "wall s" if broadcast else section.unit
    headers = [
        "contender",
        f"{unit} (best)",
        "median",
        "forkjoin adv.",
        *(["copies"] if broadcast else []),
        "peak RSS GiB",
        "peak PSS GiB",
        "detail",
    ]
    emit(console, section.title, headers, rows, set(range(1, len(headers) - 1)))
    for note in section.notes:
        console.print(f"  note: {note}")


def size_label(n: int) -> str:
    return "inf" if n >= INLINE else format_bytes(n).replace(" ", "")


def render_threshold(data: dict[str, Any], console: Any, current: int) -> None:
    sizes, thresholds = data["sizes"], data["thresholds"]
    rows = []
    for t in thresholds:
        best = data["best"].get(str(t))
        cells = [size_label(t)]
        for s in sizes:
            mark = " shm" if t <= s else ""
            cells.append("failed" if best is None else f"{best[str(s)]:,.0f}{mark}")
        rows.append(cells)
    per_size = data["per_size"]
    for key, label in (("shm", "shm (median)"), ("socket", "socket (median)")):
        figures = [per_size[str(s)][key] for s in sizes]
        rows.append([label] + ["-" if f is None else f"{f:,.0f}" for f in figures])
    rows.append(
        ["shm / socket"]
        + [
            "-" if per_size[str(s)]["ratio"] is None else f"{per_size[str(s)]['ratio']:.2f}x"
            for s in sizes
        ]
    )
    emit(
        console,
        f"4. threshold sweep: echo tasks/s (best of {data['repeats']}), one item per task, "
        f"{WORKERS} workers; rows: FORKJOIN_OUT_OF_BAND_MIN_BYTES, columns: payload size",
        ["threshold \\ payload", *[size_label(s) for s in sizes]],
        rows,
        set(range(1, len(sizes) + 1)),
    )
    console.print(
        "  note: 'shm' = that payload went through shared memory (threshold <= size); the median "
        "rows take, per size, the median over the thresholds on each side"
    )
    troubles = [
        f"{size_label(int(t))}: {count} failed attempt(s)"
        for t, count in data["failed_attempts"].items()
        if count
    ]
    if troubles:
        console.print(
            "  note: forkjoin hung or crashed (a bug: see failures in the JSON), per threshold: "
            + "; ".join(troubles)
        )
    if not data["env_read_by_forkjoin"]:
        console.print(
            "  note: forkjoin did not read FORKJOIN_OUT_OF_BAND_MIN_BYTES at import; the sweep set "
            "buffers.OUT_OF_BAND_MIN_BYTES itself, in the caller and (pool initializer) in workers"
        )
    crossover = data["crossover_bytes"]
    if crossover is None:
        console.print(
            "  shared memory never beat the socket at every size from some point on: keep "
            f"OUT_OF_BAND_MIN_BYTES at or above {size_label(max(sizes))}"
        )
    else:
        console.print(
            f"  smallest payload where shared memory beats the socket (and keeps winning above): "
            f"{size_label(crossover)}; recommended OUT_OF_BAND_MIN_BYTES = "
            f"{size_label(crossover)} (now {size_label(current)})"
        )


def format_goal(goal: Goal) -> list[str]:
    op = ">=" if goal.at_least else "<="

    def show(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}{goal.unit}"

    verdict = {True: "PASS", False: "MISS", None: "n/a"}[goal.met]
    return [goal.text, f"{op} {goal.target:g}{goal.unit}", show(goal.best), show(goal.median),
            f"{verdict} ({goal.statistic})"]  # fmt: skip


def render(
    sections: list[Section],
    goals: list[Goal],
    threshold: dict[str, Any] | None,
    console: Any,
    current: int,
) -> None:
    console.print(
        "forkjoin adv. = how many times better forkjoin's reference row (the 1.00x row) is than "
        "the row shown: >1 forkjoin ahead. Peak RSS/PSS GiB: summed over the caller and that "
        "contender's own processes, highest over its runs (+ the most a run rose above the same "
        "tree just before it); RSS counts shared memory once per process mapping it, PSS splits "
        "it between them"
    )
    for section in sections:
        render_section(section, console)
    if threshold is not None:
        render_threshold(threshold, console, current)
    if goals:
        emit(
            console,
            "Goals (from the issue), judged on the statistic in brackets",
            ["goal", "target", "best runs", "median runs", "result"],
            [format_goal(goal) for goal in goals],
            {1, 2, 3},
        )


# -- main ----------------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B?)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 1GiB, 256MiB, 1048576)")
    number, unit = float(match.group(1)), (match.group(2) or "").upper()[:1]
    return int(number * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[unit])


def metadata(settings: Settings, quick: bool, tools: Sequence[str]) -> dict[str, Any]:
    import multiprocessing

    import numpy
    import psutil
    from bench_engine import git_commit

    import forkjoin
    from forkjoin.backends import buffers

    versions = {"forkjoin": forkjoin.__version__, "numpy": numpy.__version__}
    versions["psutil"] = psutil.__version__
    for name in ("joblib", "ray"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus_usable": cpus,
        "memory_total": psutil.virtual_memory().total,
        "workers": WORKERS,
        "mp_start_method": multiprocessing.get_start_method(),
        "versions": versions,
        "git": git_commit(),
        "quick": quick,
        "tools": list(tools),
        "settings": asdict(settings),
        "out_of_band_min_bytes": buffers.OUT_OF_BAND_MIN_BYTES,
        "out_of_band_env": os.environ.get("FORKJOIN_OUT_OF_BAND_MIN_BYTES"),
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


BENCHES: dict[str, Callable[[Settings, Contenders, Clock, Log], Section]] = {
    "send": bench_send,
    "return": bench_return,
    "broadcast": bench_broadcast,
}


class Watchdog:
    """``with Watchdog(what, seconds):`` a block that outlives ``seconds`` has hung (a bug in a
    contender): print every thread's stack, stop the processes this run started (Ray's too) and
    exit with status 3. The JSON written so far stays."""

    def __init__(self, what: str, seconds: float, log: Log) -> None:
        self.what, self.seconds, self.log = what, seconds, log
        self.timer = threading.Timer(seconds, self.fire)
        self.timer.daemon = True

    def fire(self) -> None:
        self.log(f"{self.what}: no progress in {self.seconds:.0f} s, a hang; stacks follow")
        faulthandler.dump_traceback(all_threads=True)
        import psutil

        for child in psutil.Process().children(recursive=True):
            try:
                child.kill()
            except psutil.Error:
                pass
        os._exit(3)

    def __enter__(self) -> Watchdog:
        self.timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timer.cancel()


def run_pool_sections(
    settings: Settings,
    only: Sequence[str],
    tools: Sequence[str],
    clock: Clock,
    log: Log,
    done: Callable[[Section], None],
    limit: float,
) -> list[Section]:
    """The in-process sections, on one set of pools; ``done`` gets each section as it ends."""
    wanted = [key for key in POOL_SECTIONS if key in only]
    if not wanted:
        return []
    sections = []
    with Watchdog("starting the pools", limit, log):
        contenders = start_contenders(tools, log)
    try:
        for key in wanted:
            with Watchdog(key, limit, log):
                sections.append(BENCHES[key](settings, contenders, clock, log))
            done(sections[-1])
    finally:
        with Watchdog("stopping the pools", limit, log):
            stop_contenders(contenders)
    return sections


def main(
    argv: Sequence[str] | None = None, console: Any = None, clock: Clock = time.perf_counter
) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs: a smoke test")
    parser.add_argument("--json", type=Path, default=None, help="where to write results")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    parser.add_argument(
        "--tools", default=",".join(TOOLS), help=f"comma-separated subset of {','.join(TOOLS)}"
    )
    parser.add_argument(
        "--broadcast-bytes",
        type=parse_size,
        default=None,
        help="size of the broadcast object (default 1GiB, --quick 64MiB)",
    )
    parser.add_argument(
        "--distinct-arrays",
        type=int,
        default=None,
        help="send: how many distinct arrays are cycled over the tasks (default 8)",
    )
    parser.add_argument(
        "--threshold", action="store_true", help="only the out-of-band threshold sweep"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a goal is missed")
    args = parser.parse_args(argv)
    only = ["threshold"] if args.threshold else [k.strip() for k in args.only.split(",") if k]
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if set(only) - set(SECTIONS):
        parser.error(f"unknown section(s) {sorted(set(only) - set(SECTIONS))}")
    if set(tools) - set(TOOLS):
        parser.error(f"unknown tool(s) {sorted(set(tools) - set(TOOLS))}; choose from {TOOLS}")
    if "forkjoin" not in tools:
        parser.error("forkjoin is the reference: keep it in --tools")
    settings = QUICK if args.quick else FULL
    if args.broadcast_bytes:
        settings = replace(settings, broadcast_bytes=args.broadcast_bytes)
    if args.distinct_arrays:
        settings = replace(settings, distinct_arrays=args.distinct_arrays)
    json_path = args.json or (THRESHOLD_JSON if only == ["threshold"] else DEFAULT_JSON)
    console = console or make_console()
    started = clock()

    def log(message: str) -> None:
        console.print(f"[{clock() - started:6.1f}s] {message}", style="dim")

    meta = metadata(settings, args.quick, tools)
    load = meta["loadavg_start"]
    if load and load[0] > 0.5 * meta["cpus_usable"]:
        log(f"note: load average {load[0]:.2f} on {meta['cpus_usable']} cpus: expect noisy figures")
    finished: list[Section] = []

    def write(threshold: dict[str, Any] | None = None) -> None:
        """The JSON so far (after each section: a hang later does not lose what was measured)."""
        meta["seconds_total"] = clock() - started
        meta["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        data = to_json(meta, finished, evaluate_goals({s.key: s for s in finished}))
        if threshold is not None:
            data["threshold"] = threshold
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(data, indent=2) + "\n")

    def section_done(section: Section) -> None:
        finished.append(section)
        write()

    limit = 180.0 if args.quick else 1800.0
    sections = run_pool_sections(settings, only, tools, clock, log, section_done, limit)
    threshold = None
    if "threshold" in only:
        threshold = sweep(
            settings.threshold_sizes,
            settings.threshold_values,
            settings.threshold_run_seconds,
            settings.threshold_repeats,
            WORKERS,
            log,
        )
    goals = evaluate_goals({s.key: s for s in sections})
    write(threshold)
    render(sections, goals, threshold, console, meta["out_of_band_min_bytes"])
    console.print(footer(meta, load, json_path))
    missed = [goal.key for goal in goals if goal.met is False]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
