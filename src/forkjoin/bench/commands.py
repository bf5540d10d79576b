"""``forkjoin bench``, ``forkjoin stress`` and ``forkjoin check``: the analysis layer's commands.

::

    forkjoin bench MODULE:FN --items N | --input FILE --workers 1,2,4 [--html R.html --json R.json]
    forkjoin stress [MODULE:FN --input FILE | --workload trivial|payload] --tasks N
                    --faults kill=0.001,raise=0.01 --kill-every 1 [--json R.json]
    forkjoin check MODULE:FN --input FILE | --items N

Exit status: 0 ok; 1 the work failed (stress: any loss, duplication, wrong value or leak;
check: the function is not parallel safe); 2 usage error; 130 interrupted.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..cli import Streams

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _counts(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected worker counts like 1,2,4, got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _chunksize(text: str) -> int | str:
    return "auto" if text == "auto" else _positive(text)


def _chunksizes(text: str) -> list[int | str]:
    return [_chunksize(part.strip()) for part in text.split(",") if part.strip()]


def _faults(text: str) -> dict[str, float]:
    from .stress import FAULT_KINDS

    rates: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        kind, _, rate = part.partition("=")
        kind = kind.strip()
        if kind not in FAULT_KINDS:
            raise argparse.ArgumentTypeError(
                f"unknown fault {kind!r}; choose from {', '.join(FAULT_KINDS)}"
            )
        try:
            value = float(rate) if rate else 0.001
        except ValueError:
            value = -1.0
        if not 0 <= value <= 1:
            raise argparse.ArgumentTypeError(f"fault rate must be in [0, 1], got {part!r}")
        rates[kind] = value
    return rates


def _add_input(parser: argparse.ArgumentParser, required: bool) -> None:
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument("--items", type=_positive, metavar="N", help="items 0..N-1")
    source.add_argument("--input", metavar="FILE", help="JSON Lines file: one item per line")


_BENCH_EPILOG = """\
Runs FN over the items serially, then on a pool at each worker count (--repeats times each),
and prints speedup, efficiency, the Karp-Flatt serial fraction, an Amdahl fit with a 95%
confidence interval, Gustafson's scaled speedup, predictions at larger counts, where the time
went (start-up, serialisation, transfer, queue wait, compute, merge, idle) and advice.

examples:
  forkjoin bench mymodule:score --items 10000 --workers 1,2,4
  forkjoin bench mymodule:score --input items.jsonl --workers 1,2,4,8 --html report.html
"""

_STRESS_EPILOG = """\
Runs a workload at high load while injecting faults, checks every item against a serial
reference, and prints tasks done, lost, duplicated, retried, failed as expected, peak RSS,
orphan processes and leaked shared memory after close, and time versus a fault-free run.
Faults (rates per item): kill (worker SIGKILLs itself once), hang (past --timeout),
raise, unpicklable (result), memory (past --memory-limit).
Exit status 1 on any loss, duplication, wrong value, unexpected failure or leak.

examples:
  forkjoin stress --tasks 1000000 --kill-every 1
  forkjoin stress --faults kill=0.001,hang=0.0005,raise=0.01,unpicklable=0.01,memory=0.0005
  forkjoin stress mymodule:score --input items.jsonl --faults raise=0.05 --backend threads
"""

_CHECK_EPILOG = """\
Runs FN on a sample serially (twice, and in reverse order) and in parallel at several worker
counts and chunk sizes, and reports any difference: a sign that FN depends on global state, a
shared random generator, or the order of calls. Exit status 1 if any result differs.
"""


def register(commands: Any) -> dict[str, Callable[[argparse.Namespace, Streams], int]]:
    fmt = argparse.RawDescriptionHelpFormatter
    bench = commands.add_parser(
        "bench", help="measure scaling and explain it (speedup, Amdahl fit, breakdown)",
        description="Measure how a function scales with workers, and why.",
        epilog=_BENCH_EPILOG, formatter_class=fmt,
    )  # fmt: skip
    bench.add_argument("function", metavar="MODULE:FN")
    _add_input(bench, required=True)
    bench.add_argument("--workers", type=_counts, default=[1, 2, 4], metavar="1,2,4")
    bench.add_argument("--backend", default="process", help="any registered backend name")
    bench.add_argument("--repeats", type=_positive, default=3, metavar="N")
    bench.add_argument("--chunksize", type=_chunksize, default="auto", metavar="N|auto")
    bench.add_argument("--json", metavar="FILE", help="write every number as JSON")
    bench.add_argument("--html", metavar="FILE", help="write a self-contained HTML report")
    bench.add_argument("--plots", metavar="DIR", help="write PNG plots into DIR")
    bench.add_argument(
        "--profile", nargs="?", const=True, default=False, metavar="SPEEDSCOPE.json",
        help="also run once profiled at the largest worker count: top functions across "
        "workers (and a flame graph in --html); a FILE gets speedscope JSON",
    )  # fmt: skip

    stress = commands.add_parser(
        "stress", help="run a workload under injected faults; fail on any loss or leak",
        description="Stress a backend with injected faults and check nothing is lost.",
        epilog=_STRESS_EPILOG, formatter_class=fmt,
    )  # fmt: skip
    stress.add_argument("function", metavar="MODULE:FN", nargs="?", default=None)
    stress.add_argument("--input", metavar="FILE", help="JSON Lines items for MODULE:FN")
    stress.add_argument("--workload", choices=["trivial", "payload"], default="trivial")
    stress.add_argument("--tasks", type=_positive, default=100_000, metavar="N")
    stress.add_argument("--payload-size", type=_positive, default=256 * 1024, metavar="BYTES")
    stress.add_argument("--backend", default="process", help="any registered backend name")
    stress.add_argument("--workers", type=_positive, default=2, metavar="N")
    stress.add_argument("--faults", type=_faults, default={}, metavar="KIND=RATE,...")
    stress.add_argument("--kill-every", type=_seconds, default=None, metavar="SECONDS")
    stress.add_argument("--timeout", type=_seconds, default=1.0, metavar="SECONDS")
    stress.add_argument("--memory-limit", default="256MB", metavar="SIZE")
    stress.add_argument("--retries", type=int, default=5, metavar="N")
    stress.add_argument("--chunksize", type=_chunksize, default="auto", metavar="N|auto")
    stress.add_argument("--time-limit", type=_seconds, default=300.0, metavar="SECONDS")
    stress.add_argument("--no-fault-free", action="store_true", help="skip the timing baseline")
    stress.add_argument("--seed", type=int, default=0)
    stress.add_argument("--json", metavar="FILE", help="write the report as JSON")

    check = commands.add_parser(
        "check", help="check a function gives the same results serially and in parallel",
        description="Check that a function is safe to run in parallel.",
        epilog=_CHECK_EPILOG, formatter_class=fmt,
    )  # fmt: skip
    check.add_argument("function", metavar="MODULE:FN")
    _add_input(check, required=True)
    check.add_argument("--workers", type=_counts, default=[2, 3], metavar="2,3")
    check.add_argument("--chunksizes", type=_chunksizes, default=[1, 7, "auto"], metavar="1,7,auto")
    check.add_argument("--backend", default="process")
    check.add_argument("--sample", type=_positive, default=200, metavar="N")
    return {"bench": cmd_bench, "stress": cmd_stress, "check": cmd_check}


def _load(command: str, args: argparse.Namespace, streams: Streams) -> tuple[Any, Any] | None:
    """(function, items) from MODULE:FN and --items / --input; None after reporting an error."""
    from collections import deque

    from ..mapfile import MapFileError, load_function, read_jsonl

    fn = None
    if args.function is not None:
        try:
            fn = load_function(args.function)
        except MapFileError as exc:
            streams.error(command, str(exc))
            return None
    items: Any = None
    if getattr(args, "items", None) is not None:
        items = range(args.items)
    elif args.input is not None:
        try:
            with open(args.input, "rb") as stream:
                items = list(read_jsonl(stream, args.input, deque(maxlen=1)))
        except OSError as exc:
            streams.error(command, f"cannot read {args.input}: {exc.strerror or exc}")
            return None
        except MapFileError as exc:
            streams.error(command, str(exc))
            return None
    return fn, items


def _backend_ok(command: str, name: str, streams: Streams) -> bool:
    from ..backends.base import backend_names

    if name not in backend_names():
        streams.error(command, f"unknown backend {name!r}; choose one of {backend_names()}")
        return False
    return True


def cmd_bench(args: argparse.Namespace, streams: Streams) -> int:
    loaded = _load("bench", args, streams)
    if loaded is None or not _backend_ok("bench", args.backend, streams):
        return EXIT_USAGE
    fn, items = loaded
    from .. import errors
    from .scaling import scaling

    try:
        report = scaling(
            fn, items, args.workers, backend=args.backend, repeats=args.repeats,
            chunksize=args.chunksize,
        )  # fmt: skip
    except KeyboardInterrupt:
        streams.error("bench", "interrupted")
        return EXIT_INTERRUPTED
    except errors.ForkjoinError as exc:
        streams.error("bench", str(exc))
        return EXIT_FAILURE
    print(report.table(), file=streams.stdout)
    profile = _profiled_run(fn, items, args, streams) if args.profile else None
    if args.json:
        report.to_json(args.json)
        streams.note("bench", f"wrote {args.json}")
    if args.html:
        report.save_html(args.html, profile=profile)
        streams.note("bench", f"wrote {args.html}")
    if args.plots:
        for path in report.save_plots(args.plots):
            streams.note("bench", f"wrote {path}")
    return EXIT_OK


def _profiled_run(fn: Any, items: Any, args: argparse.Namespace, streams: Streams) -> Any:
    """One more run, profiled, at the largest worker count (forkjoin.observe)."""
    from ..engine.api import map as fj_map
    from ..observe.runs import start_profile

    workers = max(args.workers)
    wrapped, session = start_profile(fn)
    try:
        fj_map(
            wrapped, list(items), workers=workers, backend=args.backend, chunksize=args.chunksize
        )
    finally:
        profile = session.stop()
    print(f"\nprofiled run at {workers} workers\n{profile.render_text()}", file=streams.stdout)
    if isinstance(args.profile, str):
        profile.write_speedscope(args.profile)
        streams.note("bench", f"wrote {args.profile}")
    return profile


def cmd_stress(args: argparse.Namespace, streams: Streams) -> int:
    if (args.function is None) != (args.input is None):
        streams.error("stress", "MODULE:FN and --input go together (or use --workload)")
        return EXIT_USAGE
    loaded = _load("stress", args, streams)
    if loaded is None or not _backend_ok("stress", args.backend, streams):
        return EXIT_USAGE
    fn, items = loaded
    from .stress import stress

    try:
        report = stress(
            fn, items, workload=args.workload, tasks=args.tasks, payload_size=args.payload_size,
            backend=args.backend, workers=args.workers, rates=args.faults,
            kill_every=args.kill_every, timeout=args.timeout, memory_limit=args.memory_limit,
            retries=args.retries, chunksize=args.chunksize, time_limit=args.time_limit,
            fault_free=not args.no_fault_free, seed=args.seed,
        )  # fmt: skip
    except KeyboardInterrupt:
        streams.error("stress", "interrupted")
        return EXIT_INTERRUPTED
    except ValueError as exc:
        streams.error("stress", str(exc))
        return EXIT_USAGE
    print(report.table(), file=streams.stdout)
    if args.json:
        import json
        from pathlib import Path

        Path(args.json).write_text(json.dumps(report.as_dict(), indent=2, default=str))
        streams.note("stress", f"wrote {args.json}")
    if not report.ok:
        streams.error("stress", "FAILED: items lost, duplicated or wrong, or something leaked")
        return EXIT_FAILURE
    return EXIT_OK


def cmd_check(args: argparse.Namespace, streams: Streams) -> int:
    loaded = _load("check", args, streams)
    if loaded is None or not _backend_ok("check", args.backend, streams):
        return EXIT_USAGE
    fn, items = loaded
    from ..testing import check_parallel_safe

    try:
        report = check_parallel_safe(
            fn, items, workers=args.workers, chunksizes=args.chunksizes, backend=args.backend,
            sample=args.sample,
        )  # fmt: skip
    except KeyboardInterrupt:
        streams.error("check", "interrupted")
        return EXIT_INTERRUPTED
    print(report.summary(), file=streams.stdout)
    return EXIT_OK if report.safe else EXIT_FAILURE
