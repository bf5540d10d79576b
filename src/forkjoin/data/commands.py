"""``forkjoin process``: run a Python function over a dataset's batches, writing a dataset.

::

    forkjoin process INPUT... --fn MODULE:FN -o OUTPUT [--format parquet|csv|json]
        read_parquet / read_csv / read_json (by extension) -> map_batches(FN) -> write_<format>
        progress on stderr (partitions, rows/s, ETA), then a one-line summary

Rerunning the same command after a crash resumes: committed partitions are skipped (see
``sinks.py``). Only argparse is imported here; the data layer is imported when the command runs.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

_EPILOG = """\
FN is called with each batch (a pyarrow.Table by default; see --batch-format) and returns a
batch: a pyarrow.Table, a pandas.DataFrame or a dict of columns. MODULE is imported with the
current directory on sys.path (workers get the same path). Each partition of the input is
written to OUTPUT/part-NNNNN.<ext> by a worker (atomically: staged, then renamed), and
OUTPUT/_manifest.json lists the committed files. Running the same command again after an
interruption skips what is already committed; a different command refuses to write into the
same OUTPUT unless --mode overwrite (which never deletes the input).

examples:
  forkjoin process data/ --fn clean:normalise -o cleaned/
  forkjoin process 'logs/*.jsonl' --fn feats:extract -o feats/ --format parquet --workers 4
  forkjoin process big.csv --fn feats:extract -o out/ --batch-format pandas --on-error skip

exit status: 0 success, 1 bad input data or FN failed, 2 usage error, 130 interrupted
"""

INPUT_FORMATS = ("auto", "parquet", "csv", "json")


def register(commands: Any) -> dict[str, Callable[[argparse.Namespace, Any], int]]:
    parser = commands.add_parser(
        "process",
        help="run MODULE:FN over the batches of a Parquet/CSV/JSONL dataset, in parallel",
        description="Apply a Python function to every batch of a dataset (Parquet, CSV or JSON "
        "Lines files), in parallel, with bounded memory, writing a dataset that a rerun resumes.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", nargs="+", metavar="INPUT", help="files, globs or directories")
    parser.add_argument("--fn", required=True, metavar="MODULE:FN", help="the batch function")
    parser.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="directory")
    parser.add_argument(
        "--format", choices=("parquet", "csv", "json"), default="parquet", help="output format"
    )
    parser.add_argument(
        "--input-format", choices=INPUT_FORMATS, default="auto", help="default: by extension"
    )
    parser.add_argument("--batch-size", type=_positive, default=4096, metavar="N")
    parser.add_argument(
        "--batch-format", choices=("pyarrow", "pandas", "numpy"), default="pyarrow"
    )
    parser.add_argument("--workers", type=_positive, default=None, metavar="N")
    parser.add_argument("--backend", default="process", help="inline, threads, process, ...")
    parser.add_argument("--in-flight", type=_positive, default=None, metavar="N",
                        help="partitions in flight (default 2 per worker)")  # fmt: skip
    parser.add_argument("--mode", choices=("create", "overwrite"), default="create")
    parser.add_argument("--no-resume", action="store_true", help="refuse to resume a run")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                        help="bad input rows/files: fail (default) or skip and count")  # fmt: skip
    parser.add_argument("--partition-mb", type=_positive, default=None, metavar="MB",
                        help="target partition size (default 32)")  # fmt: skip
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None)
    progress.add_argument("--no-progress", dest="progress", action="store_false")
    return {"process": cmd_process}


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _input_format(inputs: list[str], asked: str) -> str:
    if asked != "auto":
        return asked
    import os

    from .sources import CSV_SUFFIXES, JSON_SUFFIXES, PARQUET_SUFFIXES

    names: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            for _, _, files in os.walk(item):
                names += files
        else:
            names.append(item)
    for fmt, suffixes in (("parquet", PARQUET_SUFFIXES), ("csv", CSV_SUFFIXES),
                          ("json", JSON_SUFFIXES)):  # fmt: skip
        if any(n.lower().endswith(suffixes) for n in names if not n.startswith((".", "_"))):
            return fmt
    raise ValueError(
        f"cannot tell the input format of {inputs}: no .parquet/.csv/.jsonl files; "
        f"pass --input-format"
    )


class Progress:
    """Partitions done, rows, rows/s and ETA on stderr: redrawn in place on a terminal,
    a line every few seconds otherwise."""

    LINE_INTERVAL_SECONDS = 5.0

    def __init__(self, stream: Any, total: int | None, enabled: bool,
                 clock: Callable[[], float] = time.perf_counter) -> None:  # fmt: skip
        self.stream = stream
        self.total = total
        self.enabled = enabled
        self.clock = clock
        self.start = clock()
        self.last = self.start
        self.done = 0
        self.rows = 0
        self.tty = bool(getattr(stream, "isatty", lambda: False)())

    def __call__(self, result: Any) -> None:
        self.done += 1
        self.rows += result.counts.rows_read
        if not self.enabled:
            return
        now = self.clock()
        finished = self.total is not None and self.done >= self.total
        if not self.tty and now - self.last < self.LINE_INTERVAL_SECONDS and not finished:
            return
        self.last = now
        end = "\r" if self.tty else "\n"
        print(self.line(now), end=end, file=self.stream, flush=True)

    def line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.rows / elapsed
        text = f"process: {self.done}"
        if self.total:
            remaining = (self.total - self.done) * elapsed / max(self.done, 1)
            text += f"/{self.total} partitions, ETA {remaining:.0f} s"
        else:
            text += " partitions"
        return f"{text}, {self.rows:,} rows, {rate:,.0f} rows/s"

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=self.stream, flush=True)


def cmd_process(args: argparse.Namespace, streams: Any) -> int:
    from .. import cli
    from ..errors import ForkjoinError
    from ..mapfile import MapFileError, load_function

    try:
        fn = load_function(args.fn)
    except MapFileError as exc:
        streams.error("process", str(exc))
        return cli.EXIT_USAGE
    try:
        fmt = _input_format(args.input, args.input_format)
    except ValueError as exc:
        streams.error("process", str(exc))
        return cli.EXIT_USAGE
    from . import api
    from .execute import count_partitions

    extra: dict[str, Any] = {"on_error": args.on_error}
    if args.partition_mb:
        extra["target_bytes"] = args.partition_mb * 1024 * 1024
    reader = {"parquet": api.read_parquet, "csv": api.read_csv, "json": api.read_json}[fmt]
    progress: Progress | None = None
    try:
        source = reader(args.input, **extra)
        ds = source.map_batches(fn, batch_size=args.batch_size, batch_format=args.batch_format)
        enabled = args.progress if args.progress is not None else streams.stderr.isatty()
        total = count_partitions(ds._source, ds._ops)
        progress = Progress(streams.stderr, total, bool(enabled))
        writer = {"parquet": ds.write_parquet, "csv": ds.write_csv, "json": ds.write_json}
        stats = writer[args.format](
            args.output,
            mode=args.mode,
            resume=not args.no_resume,
            workers=args.workers,
            backend=args.backend,
            in_flight=args.in_flight,
            progress=progress,
        )
    except KeyboardInterrupt:
        streams.error("process", "interrupted; rerun the same command to resume")
        return cli.EXIT_INTERRUPTED
    except ForkjoinError as exc:
        streams.error("process", str(exc))
        return cli.EXIT_FAILURE
    except (ValueError, TypeError) as exc:
        streams.error("process", str(exc))
        return cli.EXIT_USAGE
    except OSError as exc:
        streams.error("process", str(exc))
        return cli.EXIT_FAILURE
    finally:
        if progress is not None:
            progress.close()
    print(f"forkjoin process: {stats}; output in {args.output}", file=streams.stdout, flush=True)
    for problem in stats.problems:
        streams.note("process", f"skipped: {problem}")
    return cli.EXIT_OK
