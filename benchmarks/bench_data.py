"""forkjoin.data against its peers on one machine: read Parquet, a Python UDF, write Parquet.

    python benchmarks/bench_data.py [--rows N[,N...]] [--quick] [--runs N] [--only NAMES]
                                    [--json PATH]

``--rows 2000000,10000000`` runs every workload at each size, in one run (the issue's goals:
numeric at least Polars' speed, cold and warm; text at 95% of the 2-core ideal and ahead of every
peer; forkjoin's peak RSS at most Polars' and flat from the smallest size to the largest).

Two workloads over the same generated dataset (rows of id, category, value, x, y and ~200
characters of text; see _data_workloads.py):

    text      normalise, tokenise and count tokens per row: a pure-Python UDF
    numeric   numpy over three columns in map_batches: vectorised, mostly I/O
    groupby   category -> sum, mean, count, min, max of value: forkjoin vs pandas (must be equal)

Contenders, each in a fresh interpreter on the same number of workers: forkjoin
(read_parquet -> map_batches -> write_parquet; also with its workers' pyarrow/pandas imports
done before timing, and on the threads backend), pandas serial (file by file), Polars with a
Python UDF (map_batches on the column, file by file), Hugging Face ``datasets.map(num_proc=N,
batched=True)``, Ray Data ``map_batches`` and Dask ``map_partitions`` (processes scheduler).
Time is measured inside the contender from just before reading to the last file written;
start-up (imports, ray.init, warming a pool) is reported apart. Peak RSS is that of the
contender's whole process tree, sampled every 100 ms. Every contender's output is checked
against pandas' (row count and checksum).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _data_contenders import CONTENDERS, checksum  # noqa: E402
from _data_workloads import generate  # noqa: E402
from _harness import progress_log, run_measured  # noqa: E402
from _report import Goal, Row, Section, make_console, publish  # noqa: E402

DEFAULT_JSON = HERE / "results" / "bench_data.json"
DEFAULT_ROWS = 400_000  # ~100 MB of Arrow data: every contender, both workloads, ~4 minutes
QUICK_ROWS = 60_000
WORKERS = 2
CONTENDER_TIMEOUT_SECONDS = 900
# Goals, from issue 18 (they replace issue 6's; "peak RSS < 1/4 of the dataset" cannot hold at
# millions of rows: each worker's pyarrow import alone is ~100 MB).
POLARS = "polars + Python UDF"
WARM = "forkjoin (warm workers)"
POLARS_GOAL = 1.0  # numeric: forkjoin rows/s >= Polars', cold (a fresh pool) and warm
IDEAL_GOAL = 0.95  # text: rows/s >= 95% of the ideal, WORKERS x pandas serial
PEER_GOAL = 1.0  # text: ahead of every peer
RSS_POLARS_GOAL = 1.0  # forkjoin's peak RSS <= Polars' (each workload, each size)
RSS_FLAT_GOAL = 1.2  # forkjoin's peak RSS at the largest size <= 1.2x at the smallest
REFERENCE = "forkjoin"


def run_contender(name: str, workload: str, data: str, workers: int) -> dict[str, Any]:
    """One run in a fresh interpreter: its JSON line plus the peak RSS of its process tree."""
    out = tempfile.mkdtemp(prefix="fj-bench-out-")
    command = [sys.executable, str(HERE / "_data_contenders.py"), name, workload, data,
               os.path.join(out, "o"), str(workers)]  # fmt: skip
    try:
        result = run_measured(command, CONTENDER_TIMEOUT_SECONDS)
        if "error" not in result:
            # Checked here, after the contender exited: its peak RSS is its job's alone (read
            # in the contender, the checksum added ~100 MB to its caller while forkjoin's idle
            # workers were still alive, and nothing to Polars' one process).
            result["rows"], result["checksum"] = checksum(os.path.join(out, "o"), workload)
        return result
    finally:
        shutil.rmtree(out, ignore_errors=True)


def section_key(workload: str, rows: int, sizes: Sequence[int]) -> str:
    """``text`` for a run at one size; ``text 2M`` when a run compares sizes."""
    if len(sizes) == 1:
        return workload
    return f"{workload} {rows / 1e6:g}M" if rows >= 1_000_000 else f"{workload} {rows:,}"


def bench_workload(workload: str, names: Sequence[str], data: str, info: dict[str, Any],
                   runs: int, log: Any, key: str | None = None) -> Section:  # fmt: skip
    runs_by: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_number in range(runs):
        for name in names:  # round-robin: a burst of load elsewhere hits everyone alike
            result = run_contender(name, workload, data, WORKERS)
            runs_by[name].append(result)
            if "error" in result:
                log(f"{key or workload}: {name} failed: {result['error']}")
            else:
                log(
                    f"{key or workload} run {round_number + 1}/{runs}: {name}: "
                    f"{result['seconds']:.2f} s, peak RSS {result['peak_rss'] / 2**20:.0f} MB"
                )
    rows_total = info["rows"]
    expected = next((r for r in runs_by.get("pandas serial", []) if "error" not in r), None)
    section = Section(
        key or workload,
        f"{workload} workload: Parquet -> Python UDF -> Parquet, {rows_total:,} rows, "
        f"{info['arrow_bytes'] / 2**20:.0f} MB in Arrow",
        "items/s",
        True,
        "best",
        REFERENCE,
    )
    pandas_best = None
    for name in names:
        good = [r for r in runs_by[name] if "error" not in r]
        if not good:
            section.rows.append(Row(name, 0.0, [], "failed: " + " ".join(runs_by[name][0]["error"]),
                                    compared=False))  # fmt: skip
            continue
        rates = [rows_total / r["seconds"] for r in good]
        best = max(good, key=lambda r: rows_total / r["seconds"])
        correct = expected is None or (
            best["rows"] == expected["rows"]
            and abs(best["checksum"] - expected["checksum"]) <= 1e-6 * abs(expected["checksum"])
        )
        peak = max(r["peak_rss"] for r in good)
        peak_pss = max(r.get("peak_pss", 0) for r in good)  # shared pages counted once
        if name == "pandas serial":
            pandas_best = max(rates)
        detail = (
            f"{best['seconds']:.2f} s (+{best['setup_seconds']:.1f} s start-up), peak RSS "
            f"{peak / 2**20:.0f} MB (PSS {peak_pss / 2**20:.0f} MB)"
            f"{'' if correct else ', OUTPUT DIFFERS FROM PANDAS'}"
        )
        section.rows.append(
            Row(name, max(rates), rates, detail,
                extra={"seconds": [r["seconds"] for r in good], "peak_rss": peak,
                       "peak_pss": peak_pss,
                       "setup_seconds": [r["setup_seconds"] for r in good],
                       "output_matches_pandas": correct})  # fmt: skip
        )
    if pandas_best:
        for row in section.rows:
            if row.value:
                row.detail += f", {row.value / pandas_best:.2f}x pandas serial"
    section.params = {"workload": workload, "rows": rows_total, "workers": WORKERS,
                      "runs": runs, **info}  # fmt: skip
    return section


def bench_groupby(data: str, info: dict[str, Any], log: Any) -> tuple[Section, bool, float]:
    """forkjoin's groupby-agg against pandas' on the whole dataset: time and equality."""
    import numpy as np
    import pandas as pd

    import forkjoin.data as fd

    aggs = {"value": ["sum", "mean", "count", "min", "max"]}
    files = sorted(str(p) for p in Path(data).glob("*.parquet"))
    start = time.perf_counter()
    frame = pd.concat([pd.read_parquet(f, columns=["category", "value"]) for f in files])
    want = frame.groupby("category").agg(aggs)
    pandas_seconds = time.perf_counter() - start
    want.columns = ["value_" + c for c in want.columns.get_level_values(1)]
    want = want.reset_index()
    del frame
    # Workers started and the data layer loaded in them (pandas' import is not timed either).
    warm = fd.from_items([{"category": 0, "value": 1.0}] * 8, partitions=8).groupby("category")
    warm.agg(aggs).to_pandas(workers=WORKERS)
    start = time.perf_counter()
    got = (
        fd.read_parquet(data, columns=["category", "value"])
        .groupby("category")
        .agg(aggs)
        .to_pandas(workers=WORKERS)
    )
    fj_seconds = time.perf_counter() - start
    from forkjoin.engine.api import shared_pools

    shared_pools.shutdown()
    same_keys = got["category"].tolist() == want["category"].tolist()
    worst = 0.0
    for column in want.columns[1:]:
        a, b = got[column].to_numpy(dtype=float), want[column].to_numpy(dtype=float)
        worst = max(worst, float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))))
    equal = same_keys and worst <= 1e-9
    rows = info["rows"]
    section = Section("groupby", "groupby(category).agg(value: sum, mean, count, min, max)",
                      "items/s", True, "best", REFERENCE)  # fmt: skip
    section.rows = [
        Row(REFERENCE, rows / fj_seconds, [rows / fj_seconds],
            f"{fj_seconds:.2f} s; equal to pandas: {equal} (max relative difference {worst:.1e})"),
        Row("pandas serial", rows / pandas_seconds, [rows / pandas_seconds],
            f"{pandas_seconds:.2f} s"),
    ]  # fmt: skip
    log(f"groupby: forkjoin {fj_seconds:.2f} s, pandas {pandas_seconds:.2f} s, equal {equal}")
    return section, equal, worst


def _ratio_goal(key: str, text: str, target: float, ours: Row, theirs: Row,
                scale: float = 1.0) -> Goal:  # fmt: skip
    """ours / (scale x theirs), on the best runs and on the medians."""
    best = ours.value / (scale * theirs.value)
    median = statistics.median(ours.runs) / (scale * statistics.median(theirs.runs))
    return Goal(key, text, target, True, "x", "best", best, median)


def evaluate_goals(sections: list[Section], equal: bool | None) -> list[Goal]:
    goals = []
    peak_by_size: dict[str, list[float]] = {}  # workload -> forkjoin's peak RSS, smallest first
    for section in sections:
        workload = section.params.get("workload")
        if workload not in ("text", "numeric"):
            continue
        key = section.key
        rows = {r.name: r for r in section.rows if r.value}
        ours = rows.get(REFERENCE)
        if ours is None:
            continue
        peers = [r for r in rows.values() if not r.name.startswith(REFERENCE)]
        if workload == "numeric" and POLARS in rows:
            goals.append(_ratio_goal(key, f"{key}: rows/s vs Polars (cold: a fresh pool)",
                                     POLARS_GOAL, ours, rows[POLARS]))  # fmt: skip
            if WARM in rows:
                goals.append(_ratio_goal(key, f"{key}: rows/s vs Polars (warm workers)",
                                         POLARS_GOAL, rows[WARM], rows[POLARS]))  # fmt: skip
        if workload == "text":
            if "pandas serial" in rows:
                goals.append(_ratio_goal(key, f"{key}: rows/s vs the ideal ({WORKERS}x pandas "
                                         f"serial)", IDEAL_GOAL, ours, rows["pandas serial"],
                                         WORKERS))  # fmt: skip
            if peers:
                best_peer = max(peers, key=lambda r: r.value)
                goals.append(_ratio_goal(key, f"{key}: rows/s vs best peer ({best_peer.name})",
                                         PEER_GOAL, ours, best_peer))  # fmt: skip
        peak = ours.extra.get("peak_rss")
        if peak:
            peak_by_size.setdefault(workload, []).append(peak)
            polars_peak = rows[POLARS].extra.get("peak_rss") if POLARS in rows else None
            if polars_peak:
                share = peak / polars_peak
                goals.append(Goal(key, f"{key}: forkjoin peak RSS / Polars'", RSS_POLARS_GOAL,
                                  False, "x", "best", share, share))  # fmt: skip
    for workload, peaks in peak_by_size.items():
        if len(peaks) > 1:
            growth = peaks[-1] / peaks[0]
            goals.append(Goal(workload, f"{workload}: forkjoin peak RSS, largest size / "
                              f"smallest (flat)", RSS_FLAT_GOAL, False, "x", "best", growth,
                              growth))  # fmt: skip
    if equal is not None:
        goals.append(Goal("groupby", "groupby-agg identical to pandas (1 = yes)", 1, True, "",
                          "best", float(equal), float(equal)))  # fmt: skip
    return goals


def metadata(args: argparse.Namespace, datasets: dict[int, dict[str, Any]]) -> dict[str, Any]:
    versions = {}
    for module in ("forkjoin", "pyarrow", "pandas", "polars", "datasets", "ray", "dask"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus_usable": cpus,
        "workers": WORKERS,
        "versions": versions,
        "rows": args.rows,
        "runs": args.runs,
        "datasets": {str(rows): info for rows, info in datasets.items()},
        "loadavg_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def parse_sizes(text: str | None, quick: bool) -> list[int]:
    if not text:
        return [QUICK_ROWS if quick else DEFAULT_ROWS]
    sizes = sorted({int(float(part)) for part in text.split(",") if part.strip()})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"--rows takes positive row counts separated by commas, got {text!r}")
    return sizes


def main(argv: Sequence[str] | None = None, console: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", default=None, help=f"dataset rows, or sizes joined by commas ({DEFAULT_ROWS:,})"
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows: a smoke test")
    parser.add_argument("--runs", type=int, default=1, help="runs per contender (best is kept)")
    parser.add_argument("--only", default=",".join(CONTENDERS),
                        help="comma-separated contenders")  # fmt: skip
    parser.add_argument("--workloads", default="text,numeric,groupby")
    parser.add_argument("--data", default=None,
                        help="dataset directory (generated, reused); with several sizes, the "
                             "directory of one dataset per size")  # fmt: skip
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--check", action="store_true", help="exit 1 if a goal is missed")
    args = parser.parse_args(argv)
    try:
        sizes = parse_sizes(args.rows, args.quick)
    except ValueError as exc:
        parser.error(str(exc))
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contender(s) {sorted(unknown)}; choose from {list(CONTENDERS)}")
    if REFERENCE not in names:
        names.insert(0, REFERENCE)
    if "pandas serial" not in names:
        names.append("pandas serial")
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    console = console or make_console()
    started = time.perf_counter()
    log = progress_log(console)
    datasets = {}
    for rows in sizes:
        data = os.path.join(args.data or tempfile.gettempdir(), f"fj-bench-data-{rows}")
        if args.data and len(sizes) == 1:
            data = args.data
        log(f"generating {rows:,} rows in {data} (reused when present)")
        datasets[rows] = (data, generate(data, rows))
    args.rows = sizes
    meta = metadata(args, {rows: info for rows, (_, info) in datasets.items()})
    sections = []
    for rows, (data, info) in datasets.items():
        sections += [bench_workload(w, names, data, info, args.runs, log,
                                    section_key(w, rows, sizes))
                     for w in workloads if w in ("text", "numeric")]  # fmt: skip
    equal = None
    if "groupby" in workloads:  # not a goal of the sizes: at the smallest only
        data, info = datasets[sizes[0]]
        section, equal, _ = bench_groupby(data, info, log)
        sections.append(section)
    goals = evaluate_goals(sections, equal)
    meta["seconds_total"] = time.perf_counter() - started
    meta["loadavg_end"] = os.getloadavg()
    return publish(meta, sections, goals, console, args.json, args.check)


if __name__ == "__main__":
    sys.exit(main())
