"""scikit-learn on forkjoin's joblib backend, against joblib's own default (loky) and serial.

    python benchmarks/bench_sklearn.py [--quick] [--rounds N] [--calls N] [--only W,...]
                                       [--json PATH] [--check]

Three workloads (``_sklearn_workloads.py``), each run by every contender in a fresh interpreter
per round, contenders taking turns within each round:

    gridsearch       GridSearchCV(SVC) on load_digits, 5-fold, 9 candidates (issue 15's case)
    cross_validate   cross_validate(GradientBoostingClassifier) on load_digits, 10 folds
    random_forest    RandomForestClassifier(n_estimators=200, n_jobs=-1) fit + predict_proba

    forkjoin   joblib.parallel_config(backend="forkjoin", n_jobs=-1)
    loky       joblib.parallel_config(backend="loky", n_jobs=-1)     joblib's default
    n_jobs=1   the same estimator, serial

Two figures per workload, seconds (median over rounds): the first call in the interpreter
(worker start-up and scikit-learn's import in the workers included: a script), and the best
later call (warm workers: a notebook). Every result is checked equal to ``n_jobs=1``'s.
``--check`` exits 1 if forkjoin is slower than loky on any figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _report import Goal, Row, Section, make_console, publish  # noqa: E402
from _sklearn_workloads import CONTENDERS, WORKLOADS  # noqa: E402

DEFAULT_JSON = HERE / "results" / "bench_sklearn.json"
REFERENCE = "forkjoin"
BASELINE = "n_jobs=1"
LOKY_GOAL = 1.0  # forkjoin >= loky: loky's seconds / forkjoin's seconds, issue 15
RUN_TIMEOUT_S = 600  # one contender's interpreter; a hang must not stall the whole run


def run_contender(workload: str, contender: str, size: str, calls: int) -> dict[str, Any]:
    """One fresh interpreter running ``workload`` ``calls`` times; its JSON line."""
    command = [sys.executable, str(HERE / "_sklearn_workloads.py"), workload, contender, size,
               str(calls)]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{workload} on {contender} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_workload(
    workload: str, names: list[str], size: str, rounds: int, calls: int, log: Any
) -> tuple[list[Section], bool]:
    """The cold and warm sections of one workload, and whether every result matched."""
    cold: dict[str, list[float]] = {name: [] for name in names}
    warm: dict[str, list[float]] = {name: [] for name in names}
    results: dict[str, list[Any]] = {name: [] for name in names}
    for round_number in range(rounds):
        for name in names:
            out = run_contender(workload, name, size, calls)
            cold[name].append(out["seconds"][0])
            if len(out["seconds"]) > 1:
                warm[name].append(min(out["seconds"][1:]))
            results[name].append(out["result"])
            log(f"{workload} round {round_number + 1}/{rounds}: {name} "
                f"{', '.join(f'{s:.2f}' for s in out['seconds'])} s")  # fmt: skip
    expected = results[BASELINE][0]
    equal = all(result == expected for runs in results.values() for result in runs)
    sections = []
    for key, figures, what in ((workload, cold, "first call, fresh interpreter"),
                               (f"{workload}-warm", warm, "later call, warm workers")):  # fmt: skip
        if not all(figures.values()):
            continue
        section = Section(key, f"{workload}: {what}", "s", False, "median", REFERENCE,
                          params={"size": size, "rounds": rounds, "calls": calls})  # fmt: skip
        for name in names:
            runs = figures[name]
            detail = "matches n_jobs=1" if all(r == expected for r in results[name]) else "WRONG"
            section.rows.append(Row(name, statistics.median(runs), runs, detail,
                                    compared=name != REFERENCE))  # fmt: skip
        serial = statistics.median(figures[BASELINE])
        section.notes.append(
            "speed-up over n_jobs=1: "
            + ", ".join(f"{n} {serial / statistics.median(figures[n]):.2f}x" for n in names)
        )
        sections.append(section)
    return sections, equal


def evaluate_goals(sections: list[Section], equal: dict[str, bool]) -> list[Goal]:
    goals = []
    for section in sections:
        names = {row.name for row in section.rows}
        if {"forkjoin", "loky"} <= names:
            ours, loky = section.row("forkjoin"), section.row("loky")
            best = min(loky.runs) / min(ours.runs)
            median = statistics.median(loky.runs) / statistics.median(ours.runs)
            goals.append(Goal(section.key, f"{section.key}: loky's time / forkjoin's", LOKY_GOAL,
                              True, "x", "median", best, median))  # fmt: skip
    for workload, ok in equal.items():
        goals.append(Goal(workload, f"{workload}: results equal n_jobs=1 (1 = yes)", 1, True, "",
                          "best", float(ok), float(ok)))  # fmt: skip
    return goals


def main(argv: Sequence[str] | None = None, console: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny data: checks the plumbing")
    parser.add_argument("--rounds", type=int, default=3, help="fresh interpreters per contender")
    parser.add_argument("--calls", type=int, default=2, help="calls per interpreter (>= 2: warm)")
    parser.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--check", action="store_true", help="exit 1 if a goal is missed")
    args = parser.parse_args(argv)
    workloads = [w.strip() for w in args.only.split(",") if w.strip()]
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    unknown = (set(workloads) - set(WORKLOADS)) | (set(names) - set(CONTENDERS))
    if unknown:
        parser.error(f"unknown workload(s)/contender(s) {sorted(unknown)}")
    for required in (REFERENCE, BASELINE):
        if required not in names:
            names.append(required)
    size = "quick" if args.quick else "full"
    console = console or make_console()
    started = time.perf_counter()

    def log(message: str) -> None:
        console.print(f"[{time.perf_counter() - started:6.1f}s] {message}")

    meta: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "versions": {m: _version(m) for m in ("forkjoin", "joblib", "sklearn", "numpy")},
        "size": size,
        "loadavg_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    sections: list[Section] = []
    equal: dict[str, bool] = {}
    for workload in workloads:
        found, equal[workload] = bench_workload(workload, names, size, args.rounds, args.calls,
                                                log)  # fmt: skip
        sections += found
    goals = evaluate_goals(sections, equal)
    meta["seconds_total"] = time.perf_counter() - started
    meta["loadavg_end"] = os.getloadavg()
    return publish(meta, sections, goals, console, args.json, args.check)


def _version(module: str) -> str | None:
    try:
        return str(__import__(module).__version__)
    except ImportError:
        return None


if __name__ == "__main__":
    sys.exit(main())
