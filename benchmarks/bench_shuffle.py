"""forkjoin.data's all-to-all operations against the engines people would pick instead.

    python benchmarks/bench_shuffle.py [--rows N] [--quick] [--only NAMES] [--workloads W]
                                       [--json PATH] [--check]

Data shaped like TPC-H (see _shuffle_workloads.py): lineitem (--rows, default 10 M) and orders
(a quarter as many), as Parquet. Four figures:

    join_agg   lineitem JOIN orders on the order key, then sum(l_extendedprice) per priority
    sort       global sort of lineitem by l_extendedprice, written as Parquet
    groups     a least-squares fit per l_suppkey (1,000 groups): group-apply with a UDF
    broadcast  join_agg against a 10,000-row orders table

Contenders, each in a fresh interpreter with 2 workers or threads: forkjoin, pandas (serial),
Polars (lazy, streaming engine), DuckDB, Dask DataFrame (distributed, 2 processes), Ray Data
and Daft (native runner). Time is the workload alone (start-up apart); peak RSS is that of the
contender's process tree (sampled every 100 ms; PSS beside it counts the pages that forked
workers share with their zygote once); forkjoin's spill bytes come from its stats.
Every result is checked against pandas' (or, where pandas failed, DuckDB's): aggregates and fit
coefficients to 1e-6, the sort by reading the output back (rows, sum, every file sorted, files'
ranges in order). A contender that fails or runs out of memory is a row that says so.
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _harness import library_versions, run_measured  # noqa: E402
from _report import Goal, Row, Section, make_console, publish  # noqa: E402
from _shuffle_contenders import CONTENDERS  # noqa: E402
from _shuffle_workloads import generate  # noqa: E402

DEFAULT_JSON = HERE / "results" / "bench_shuffle.json"
DEFAULT_ROWS = 10_000_000
QUICK_ROWS = 200_000
WORKERS = 2
WORKLOADS = ("join_agg", "sort", "groups", "broadcast")
REFERENCE = "forkjoin"
# Goals, from issue 17.
SLOW_PEER_GOAL = 2.0  # >= 2x Dask DataFrame and Ray Data on every figure
FAST_PEER_GOAL = 0.8  # >= 0.8x the faster of Polars and DuckDB on the join and the sort
TOLERANCE = 1e-6
CONTENDER_TIMEOUT_SECONDS = 900


def check_sort(out: str, expected_rows: int, expected_sum: float) -> str | None:
    """None if the Parquet files under ``out`` hold every row, sorted; else what is wrong."""
    import numpy as np
    import pyarrow.parquet as pq

    files = sorted(glob.glob(os.path.join(out, "**", "*.parquet"), recursive=True))
    if not files:
        return "no output files"
    ranges = []
    rows, total = 0, 0.0
    for path in files:
        values = pq.read_table(path, columns=["l_extendedprice"]).column(0).to_numpy()
        if len(values) == 0:
            continue
        if np.any(values[1:] < values[:-1]):
            return f"{os.path.basename(path)} is not sorted"
        ranges.append((values[0], values[-1]))
        rows += len(values)
        total += float(values.sum())
    ranges.sort()
    if any(ranges[i][1] > ranges[i + 1][0] for i in range(len(ranges) - 1)):
        return "files' ranges overlap"
    if rows != expected_rows or abs(total - expected_sum) > TOLERANCE * abs(expected_sum):
        return f"{rows} rows, sum {total}: expected {expected_rows}, {expected_sum}"
    return None


def compare(result: Any, expected: Any) -> str | None:
    """None if two results (dicts of numbers or of [a, b]) agree to TOLERANCE."""
    if set(result) != set(expected):
        return f"{len(result)} keys, expected {len(expected)}"
    for key, want in expected.items():
        got = result[key]
        pairs = zip(got, want, strict=True) if isinstance(want, list) else [(got, want)]
        for g, w in pairs:
            if abs(g - w) > TOLERANCE * max(1.0, abs(w)):
                return f"{key}: {got} != {want}"
    return None


def lineitem_truth(data: str) -> tuple[int, float]:
    import pyarrow.parquet as pq

    column = pq.read_table(os.path.join(data, "lineitem"), columns=["l_extendedprice"]).column(0)
    return len(column), float(column.to_numpy().sum())


def bench(
    workload: str, names: Sequence[str], data: str, info: dict[str, Any], log: Any
) -> Section:
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        out = tempfile.mkdtemp(prefix="fj-bench-shuffle-")
        command = [
            sys.executable,
            str(HERE / "_shuffle_contenders.py"),
            name,
            workload,
            data,
            os.path.join(out, "o"),
            str(WORKERS),
        ]
        result = run_measured(command, info["timeout"])
        if "error" not in result and workload == "sort":
            result["problem"] = check_sort(os.path.join(out, "o"), *info["truth"])
        shutil.rmtree(out, ignore_errors=True)
        results[name] = result
        if "error" in result:
            log(f"{workload}: {name} failed: {' '.join(result['error'])}")
        else:
            log(
                f"{workload}: {name}: {result['seconds']:.2f} s, peak RSS "
                f"{result['peak_rss'] / 2**20:.0f} MB "
                f"(PSS {result.get('peak_pss', 0) / 2**20:.0f} MB)"
            )
    reference = next(
        (
            results[n]["result"]
            for n in ("pandas", "DuckDB")
            if n in results and "error" not in results[n]
        ),
        None,
    )
    rows = info["rows"]
    section = Section(
        workload,
        f"{workload}: {TITLES[workload]}, {rows:,} lineitem rows",
        "items/s",
        True,
        "best",
        REFERENCE,
    )
    for name in names:
        result = results[name]
        if "error" in result:
            reason = " ".join(result["error"])[-160:]
            section.rows.append(
                Row(
                    name,
                    0.0,
                    [],
                    f"FAILED: {reason} (peak RSS {result['peak_rss'] / 2**20:.0f} MB)",
                    compared=False,
                )
            )
            continue
        problem = result.get("problem")
        if problem is None and workload != "sort" and reference is not None:
            problem = compare(result["result"], reference)
        rate = rows / result["seconds"]
        spill = result.get("spill_bytes")
        detail = (
            f"{result['seconds']:.2f} s (+{result['setup_seconds']:.1f} s start-up), "
            f"peak RSS {result['peak_rss'] / 2**20:.0f} MB "
            f"(PSS {result.get('peak_pss', 0) / 2**20:.0f} MB)"
            + (f", spilled {spill / 2**20:.0f} MB" if spill is not None else "")
            + (f", WRONG RESULT: {problem}" if problem else ", result checked")
        )
        section.rows.append(
            Row(
                name,
                rate,
                [rate],
                detail,
                extra={
                    "seconds": result["seconds"],
                    "peak_rss": result["peak_rss"],
                    "peak_pss": result.get("peak_pss"),  # shared pages counted once
                    "spill_bytes": spill,
                    "correct": problem is None,
                },
            )
        )
    section.params = {"rows": rows, "workers": WORKERS}
    return section


TITLES = {
    "join_agg": "lineitem JOIN orders, sum per priority",
    "sort": "global sort of lineitem by a float, to Parquet",
    "groups": "least squares per group, 1,000 groups",
    "broadcast": "lineitem JOIN 10,000 orders, sum per priority",
}


def goals_of(sections: list[Section]) -> list[Goal]:
    goals = []
    for section in sections:
        ours = section.row(REFERENCE)
        if not ours.value:
            continue
        for peer in ("Dask DataFrame", "Ray Data"):
            row = next((r for r in section.rows if r.name == peer), None)
            ratio = ours.value / row.value if row is not None and row.value else None
            goals.append(
                Goal(
                    section.key,
                    f"{section.key}: vs {peer}",
                    SLOW_PEER_GOAL,
                    True,
                    "x",
                    "best",
                    ratio,
                    ratio,
                )
            )
        if section.key in ("join_agg", "sort"):
            fast = [r for r in section.rows if r.name in ("Polars streaming", "DuckDB") and r.value]
            if fast:
                best = max(fast, key=lambda r: r.value)
                ratio = ours.value / best.value
                goals.append(
                    Goal(
                        section.key,
                        f"{section.key}: vs the faster of Polars and DuckDB ({best.name})",
                        FAST_PEER_GOAL,
                        True,
                        "x",
                        "best",
                        ratio,
                        ratio,
                    )
                )
        completed = [
            r.extra["peak_rss"]
            for r in section.rows
            if r.value and not r.name.startswith(REFERENCE) and r.extra.get("correct")
        ]
        if completed:
            share = ours.extra["peak_rss"] / min(completed)
            goals.append(
                Goal(
                    section.key,
                    f"{section.key}: peak RSS / lowest peer's",
                    1.0,
                    False,
                    "x",
                    "best",
                    share,
                    share,
                )
            )
    return goals


def metadata(args: argparse.Namespace, info: dict[str, Any]) -> dict[str, Any]:
    modules = ("forkjoin", "pyarrow", "pandas", "polars", "duckdb", "dask", "ray", "daft")
    from forkjoin.data.kernels import kernel_name

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "workers": WORKERS,
        "versions": library_versions(modules),
        "forkjoin_kernel": kernel_name(),
        "rows": args.rows,
        "dataset": info,
        "loadavg_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def main(argv: Sequence[str] | None = None, console: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=None, help=f"lineitem rows ({DEFAULT_ROWS:,})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows: a smoke test")
    parser.add_argument("--only", default=",".join(CONTENDERS), help="comma-separated contenders")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--data", default=None, help="dataset directory (generated, reused)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--check", action="store_true", help="exit 1 if a goal is missed")
    parser.add_argument(
        "--timeout",
        type=float,
        default=CONTENDER_TIMEOUT_SECONDS,
        help="seconds a contender may take for one workload before it is a failed row",
    )
    args = parser.parse_args(argv)
    args.rows = args.rows or (QUICK_ROWS if args.quick else DEFAULT_ROWS)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contender(s) {sorted(unknown)}; choose from {list(CONTENDERS)}")
    if REFERENCE not in names:
        names.insert(0, REFERENCE)
    workloads = [w for w in re.split(r"[, ]+", args.workloads) if w]
    console = console or make_console()
    started = time.perf_counter()

    def log(message: str) -> None:
        console.print(f"[{time.perf_counter() - started:6.1f}s] {message}")

    data = args.data or os.path.join(tempfile.gettempdir(), f"fj-bench-shuffle-{args.rows}")
    log(f"generating {args.rows:,} lineitem rows in {data} (reused when present)")
    info = generate(data, args.rows)
    info["truth"] = lineitem_truth(data)
    info["timeout"] = args.timeout
    meta = metadata(args, info)
    sections = [bench(w, names, data, info, log) for w in workloads]
    goals = goals_of(sections)
    meta["seconds_total"] = time.perf_counter() - started
    meta["loadavg_end"] = os.getloadavg()
    return publish(meta, sections, goals, console, args.json, args.check)


if __name__ == "__main__":
    sys.exit(main())
