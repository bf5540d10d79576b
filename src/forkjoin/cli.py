"""forkjoin's command line. Thin: parses arguments and calls the public API.

::

    forkjoin info [--json]                       the machine, backends, versions  (sysinfo.py)
    forkjoin map MODULE:FN IN.jsonl -o OUT.jsonl  a function over JSON Lines       (mapfile.py)
    forkjoin demo [--quick]                      serial vs parallel on real work  (demo/)
    forkjoin process | train | bench | stress | check | dashboard    the layers' commands

``main(argv, stdout=..., stderr=...)`` returns the exit status instead of exiting, and writes
only to the streams it is given, so tests call it in-process with ``io.StringIO``. Exit status:
0 success, 1 the work failed (a task raised, a worker died, bad input data), 2 usage error
(bad arguments, MODULE:FN not found), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack, redirect_stderr, redirect_stdout
from typing import Any, TextIO

import forkjoin as fj

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a process killed by it


class Streams:
    """The console a command writes to (injected, so tests can capture it)."""

    def __init__(self, stdout: TextIO, stderr: TextIO, stdin: TextIO) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.stdin = stdin

    def error(self, command: str, message: str) -> None:
        print(f"forkjoin {command}: error: {message}", file=self.stderr, flush=True)

    def note(self, command: str, message: str) -> None:
        print(f"forkjoin {command}: {message}", file=self.stderr, flush=True)


# -- argument types ------------------------------------------------------------------------------


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``, with a message that says so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _chunksize(text: str) -> int | str:
    return "auto" if text == "auto" else _positive_int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


# -- the parser ----------------------------------------------------------------------------------

_MAP_EPILOG = """\
Each input line is one JSON value; FN is called with it and its result written as one JSON line,
in input order. Blank input lines are skipped. MODULE is imported with the current directory on
sys.path (workers get the same path). OUTPUT appears only when the whole run succeeded: it is
written to a temporary file next to it and renamed into place. Use - for stdin / stdout.

examples:
  forkjoin map mymodule:score items.jsonl -o scores.jsonl
  forkjoin map mymodule:score items.jsonl -o scores.jsonl --timeout 30 --on-error skip
  cat items.jsonl | forkjoin map mymodule:score - -o - --workers 4

exit status: 0 success, 1 a task failed / bad input line, 2 usage error, 130 interrupted
"""

_DEMO_EPILOG = """\
Section 1 generates text documents (fixed seed, with planted near-copies) and computes MinHash
signatures in pure Python: serially, then with fj.map and fj.map_reduce on a Pool. It checks that
the parallel results equal the serial ones, that the planted near-duplicates are found, and
prints serial/parallel time, speedup, efficiency (speedup / workers), items/s and pool.stats().
Section 2 writes a generated Parquet dataset, runs a Python UDF over it serially and with
forkjoin.data (map_batches -> write_parquet, then groupby().agg()), and checks both agree.
Section 3 (with torch and scikit-learn installed) trains an MLP on scikit-learn's digits on 1 and
2 ranks with forkjoin.train and checks both reach the accuracy floor.
Exit status 1 if any parallel result differs from the serial one.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forkjoin",
        description=(
            "Parallel Python for machine learning and data processing: split, assign, run, "
            "sync, merge."
        ),
        epilog="Run 'forkjoin COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"forkjoin {fj.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    info = commands.add_parser(
        "info",
        help="show CPUs, memory, GPUs, available backends and package versions",
        description="Show what this machine offers forkjoin: usable CPUs, memory, GPUs, the "
        "backends that can run here, and the versions of key packages.",
    )
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")

    mapper = commands.add_parser(
        "map",
        help="apply MODULE:FN to every line of a JSON Lines file, in parallel",
        description="Apply a function to every value of a JSON Lines file, in parallel, "
        "writing the results in order.",
        epilog=_MAP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mapper.add_argument("function", metavar="MODULE:FN", help="the function, e.g. mymodule:fn")
    mapper.add_argument("input", metavar="INPUT", help="JSON Lines file to read (- for stdin)")
    mapper.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUTPUT",
        help="JSON Lines file to write, atomically (- for stdout)",
    )
    mapper.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="worker processes (default: every usable CPU)",
    )
    mapper.add_argument(
        "--chunksize",
        type=_chunksize,
        default="auto",
        metavar="N",
        help='items per task, or "auto" to size tasks by measured duration (default: auto)',
    )
    mapper.add_argument(
        "--timeout",
        type=_seconds,
        metavar="S",
        help="seconds one item may run before its worker is stopped (default: none)",
    )
    mapper.add_argument(
        "--retries",
        type=_non_negative_int,
        default=2,
        metavar="N",
        help="times an item whose worker died is retried on a fresh worker (default: 2)",
    )
    mapper.add_argument(
        "--on-error",
        choices=("raise", "skip", "collect"),
        default="raise",
        help="raise: stop at the first failure, write nothing (default); skip: leave failed "
        'items out; collect: write {"error": {...}} in their place',
    )
    mapper.add_argument(
        "--backend",
        choices=("process", "threads", "inline"),
        help="where tasks run (default: process; inline with one worker)",
    )
    mapper.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar on stderr (default: only on a terminal, for runs over ~2 s)",
    )
    mapper.add_argument(
        "-v", "--verbose", action="store_true", help="show tracebacks and a summary"
    )

    demo = commands.add_parser(
        "demo",
        help="run real workloads (text, Parquet, training) serially and in parallel",
        description="Run real workloads on generated data, serially and in parallel, check "
        "they agree, and report speedup and efficiency (~1-2 min; --quick ~30 s).",
        epilog=_DEMO_EPILOG,
    )
    demo.add_argument(
        "--items",
        type=_positive_int,
        metavar="N",
        help="work items per section (default: each section's own, e.g. 600 documents; "
        "--quick: 100)",
    )
    demo.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="worker processes (default: every usable CPU)",
    )
    demo.add_argument("--quick", action="store_true", help="a small run (~2 s)")
    demo.add_argument(
        "--chunksize",
        type=_chunksize,
        default="auto",
        metavar="N",
        help='items per task for the parallel calls, or "auto" (default: auto)',
    )
    demo.add_argument(
        "--seed",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="seed of the generated data (default: 1234)",
    )
    for module in _command_modules():
        COMMANDS.update(module.register(commands))
    return parser


# Layers add their own subcommands (``forkjoin process``, ``train``, ``bench``...): each module
# defines ``register(commands) -> {name: handler}``, imports only argparse at the top, and does
# its heavy imports inside the handler, so ``forkjoin --help`` stays fast.
_COMMAND_MODULES = (
    "forkjoin.data.commands",
    "forkjoin.train.commands",
    "forkjoin.bench.commands",
    "forkjoin.observe.commands",
)


def _command_modules() -> list[Any]:
    import importlib

    modules = []
    for name in _COMMAND_MODULES:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):
                raise  # the module exists but something it imports is missing: show it
    return modules


# -- commands ------------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace, streams: Streams) -> int:
    from .sysinfo import collect_info, format_info

    info = collect_info()
    if args.json:
        print(json.dumps(info, indent=2), file=streams.stdout)
    else:
        print(format_info(info), file=streams.stdout)
    return EXIT_OK


def _explain(streams: Streams, error: BaseException, verbose: bool) -> None:
    """The traceback behind an error, or a hint that --verbose shows it."""
    cause = getattr(error, "error", None) or error
    remote = getattr(cause, "traceback_text", "")
    if not verbose:
        if remote:
            print("(run with --verbose for the worker's traceback)", file=streams.stderr)
        return
    if remote:
        print("worker traceback:\n" + remote.rstrip(), file=streams.stderr)
    else:
        print("".join(traceback.format_exception(cause)).rstrip(), file=streams.stderr)


def cmd_map(args: argparse.Namespace, streams: Streams) -> int:
    from .mapfile import MapFileError, atomic_output, load_function, map_jsonl

    try:
        fn = load_function(args.function)
    except MapFileError as exc:
        streams.error("map", str(exc))
        if args.verbose and exc.error is not None:
            _explain(streams, exc, True)
        return EXIT_USAGE
    options: dict[str, Any] = {
        "chunksize": args.chunksize,
        "retries": args.retries,
        "progress": args.progress,
    }
    for name in ("workers", "timeout", "backend"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    to_stdout = args.output == "-"
    destination = "stdout" if to_stdout else args.output
    start = time.perf_counter()
    try:
        with ExitStack() as stack:
            # Bytes, decoded line by line, so that bad UTF-8 is reported at its line.
            source: Iterable[bytes | str]
            if args.input == "-":
                source = getattr(streams.stdin, "buffer", streams.stdin)
            else:
                source = stack.enter_context(open(args.input, "rb"))
            sink = streams.stdout if to_stdout else stack.enter_context(atomic_output(args.output))
            summary = map_jsonl(
                fn,
                source,
                sink,
                source_name="stdin" if args.input == "-" else args.input,
                on_error=args.on_error,
                **options,
            )
    except KeyboardInterrupt:
        streams.error("map", f"interrupted; {destination} was not written")
        return EXIT_INTERRUPTED
    except (MapFileError, fj.ForkjoinError) as exc:  # before OSError: a TaskError may be one
        streams.error("map", str(exc))
        if not to_stdout:
            streams.note("map", f"{args.output} was not written")
        _explain(streams, exc, args.verbose)
        return EXIT_FAILURE
    except (ValueError, TypeError) as exc:  # options the engine refused (task errors are above)
        streams.error("map", str(exc))
        return EXIT_USAGE
    except OSError as exc:
        if exc.filename:
            streams.error("map", f"cannot open {exc.filename}: {exc.strerror}")
        else:
            streams.error("map", str(exc))
        return EXIT_FAILURE
    if summary.failed:
        what = "skipped" if args.on_error == "skip" else "written as error records"
        streams.note("map", f"{summary.failed} of {summary.items} items failed and were {what}:")
        for failure in summary.failures:
            print(f"  {failure}", file=streams.stderr)
        if summary.failed > len(summary.failures):
            print(f"  ... and {summary.failed - len(summary.failures)} more", file=streams.stderr)
    if args.verbose:
        seconds = time.perf_counter() - start
        streams.note("map", f"{summary.written} lines written to {destination} in {seconds:.2f} s")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, streams: Streams) -> int:
    from .demo import DEFAULT_SEED, run_demo

    try:
        reports = run_demo(
            items=args.items,
            workers=args.workers,
            quick=args.quick,
            seed=DEFAULT_SEED if args.seed is None else args.seed,
            chunksize=args.chunksize,
            out=streams.stdout,
        )
    except KeyboardInterrupt:
        streams.error("demo", "interrupted")
        return EXIT_INTERRUPTED
    return EXIT_OK if all(report.verified for report in reports) else EXIT_FAILURE


COMMANDS: dict[str, Callable[[argparse.Namespace, Streams], int]] = {
    "info": cmd_info,
    "map": cmd_map,
    "demo": cmd_demo,
}


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    """Run the command line; returns the exit status (never calls ``sys.exit``)."""
    streams = Streams(stdout or sys.stdout, stderr or sys.stderr, stdin or sys.stdin)
    parser = build_parser()
    # argparse prints --help, --version and usage errors itself, then exits: keep both in hand.
    with redirect_stdout(streams.stdout), redirect_stderr(streams.stderr):
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return COMMANDS[args.command](args, streams)
    except BrokenPipeError:
        # The reader went away (``forkjoin info | head``): not an error worth a traceback.
        # Point stdout at /dev/null so the interpreter's final flush does not complain either.
        if streams.stdout is sys.__stdout__ and sys.__stdout__ is not None:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.__stdout__.fileno())
        return EXIT_BROKEN_PIPE
