"""``forkjoin map``: apply a function to every value of a JSON Lines file, in parallel.

::

    INPUT.jsonl ──read line by line──> json.loads ──> fj.imap(fn, ordered) ──> json.dumps
       (blank lines skipped; a bad line            (bounded in-flight work:       │
        stops the run, naming its number)           memory stays flat)            ▼
                                              .OUTPUT.jsonl.<random>.tmp (same directory)
                                                  │ complete: fsync, then os.replace
                                                  ▼
                                              OUTPUT.jsonl (never seen half-written)

Results come back in input order, so the k-th output line belongs to the k-th input value; a
small queue of line numbers (as long as the work in flight) turns an item index back into the
line it came from, for error messages. ``-`` reads stdin / writes stdout (stdout is streamed, so
it cannot be atomic).
"""

from __future__ import annotations

import importlib
import json
import os
import stat
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, TextIO

import forkjoin as fj
from forkjoin.errors import ForkjoinError

# Failures listed by name in the summary of an on_error="skip" run; the rest are only counted.
MAX_FAILURES_LISTED = 5


class MapFileError(ForkjoinError):
    """A ``forkjoin map`` run could not complete; the message says where and why.

    ``line`` is the input line concerned (if any); ``error`` the underlying exception.
    """

    _fields: ClassVar[tuple[str, ...]] = ("line", "error")

    def __init__(
        self, message: str, *, line: int | None = None, error: BaseException | None = None
    ):
        super().__init__(message)
        self.line = line
        self.error = error


class InputLineError(MapFileError, ValueError):
    """An input line is not valid JSON (or not valid UTF-8)."""


@dataclass
class MapSummary:
    items: int = 0  # values read and processed
    written: int = 0  # lines written
    failed: int = 0  # items that failed (skipped or collected)
    failures: list[str] = field(default_factory=list)  # the first few, described


def load_function(spec: str) -> Callable[[Any], Any]:
    """``MODULE:FN`` (FN may be dotted, e.g. ``Class.method``) imported with the current
    directory first on ``sys.path``; workers get the same ``sys.path``."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise MapFileError(f"expected MODULE:FN (e.g. mymodule:process), got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise MapFileError(
            f"cannot import module {module_name!r} ({exc}); it is looked up in the current "
            f"directory ({cwd}) and on sys.path",
            error=exc,
        ) from exc
    except Exception as exc:
        raise MapFileError(
            f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}", error=exc
        ) from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise MapFileError(
                f"module {module_name!r} has no attribute {attribute!r}", error=exc
            ) from exc
    if not callable(target):
        raise MapFileError(f"{spec} is a {type(target).__name__}, not a function")
    fn: Callable[[Any], Any] = target
    return fn


def read_jsonl(stream: Iterable[bytes | str], name: str, line_numbers: deque[int]) -> Iterator[Any]:
    """Values of a JSON Lines stream, lazily; appends each value's line number to
    ``line_numbers``. Blank lines are skipped. Give it a binary stream so that text that is
    not UTF-8 is reported at the right line (a text stream decodes ahead, in blocks)."""
    for number, raw in enumerate(stream, 1):
        if isinstance(raw, bytes):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputLineError(
                    f"{name} line {number}: not UTF-8 text ({exc.reason} at byte {exc.start})",
                    line=number,
                ) from exc
        else:
            line = raw
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputLineError(
                f"{name} line {number}: not valid JSON ({exc.msg} at column {exc.colno}): "
                f"{_clip(line.strip())}",
                line=number,
            ) from exc
        line_numbers.append(number)
        yield value


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _default_mode(path: str) -> int:
    """The mode a new file would get (0666 less the umask), or the existing file's mode."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextmanager
def atomic_output(path: str) -> Iterator[TextIO]:
    """A text file that appears at ``path`` complete or not at all.

    Written to a temporary file in the same directory (so ``os.replace`` is an atomic rename on
    the same filesystem), fsynced, then renamed over ``path``; any exception, Ctrl-C included,
    removes the temporary file and leaves ``path`` as it was.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, temporary = tempfile.mkstemp(
            dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
        )
    except OSError as exc:  # name the file the user asked for, not the temporary one
        raise OSError(exc.errno, exc.strerror, path) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, _default_mode(path))
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable; not possible everywhere, and not essential
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _describe(error: BaseException) -> tuple[str, str]:
    """(type name, message) of a failure, naming the user's exception type for a TaskError."""
    type_name = getattr(error, "original_type", "") or type(error).__name__
    original = getattr(error, "original", None)
    return type_name, str(original if original is not None else error)


def map_jsonl(
    fn: Callable[[Any], Any],
    source: Iterable[bytes | str],
    sink: TextIO,
    *,
    source_name: str = "<input>",
    on_error: str = "raise",
    **options: Any,
) -> MapSummary:
    """Write ``fn(value)`` to ``sink`` for every JSON value of ``source``, in order.

    ``on_error``: ``"raise"`` stops at the first failure (``MapFileError`` naming the line);
    ``"skip"`` leaves failed values out; ``"collect"`` writes
    ``{"error": {"type": ..., "message": ..., "line": N}}`` in their place. A result that is not
    JSON (NaN included) is a failure of its item. Other options go to ``fj.imap``.
    """
    if on_error not in ("raise", "skip", "collect"):
        raise ValueError(f"on_error must be 'raise', 'skip' or 'collect', got {on_error!r}")
    summary = MapSummary()
    line_numbers: deque[int] = deque()  # lines of the values read and not yet written
    values = read_jsonl(source, source_name, line_numbers)
    # Failures come back in place of results so that each keeps its position (and line).
    results = fj.imap(fn, values, on_error="raise" if on_error == "raise" else "collect", **options)
    try:
        for result in results:
            line = line_numbers.popleft()
            summary.items += 1
            failure: BaseException | None = result if isinstance(result, BaseException) else None
            if failure is None:
                try:
                    text = json.dumps(result, ensure_ascii=False, allow_nan=False)
                except (TypeError, ValueError) as exc:
                    failure = exc
                    if on_error == "raise":
                        raise MapFileError(
                            f"{source_name} line {line}: the result cannot be written as JSON "
                            f"({type(exc).__name__}: {exc}): {_clip(repr(result))}",
                            line=line,
                            error=exc,
                        ) from exc
                else:
                    sink.write(text + "\n")
                    summary.written += 1
                    continue
            type_name, message = _describe(failure)
            summary.failed += 1
            if len(summary.failures) < MAX_FAILURES_LISTED:
                summary.failures.append(f"line {line}: {type_name}: {message}")
            if on_error == "collect":
                record = {"error": {"type": type_name, "message": message, "line": line}}
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                summary.written += 1
    except fj.ForkjoinError as exc:
        index = getattr(exc, "index", None)
        offset = index - summary.items if isinstance(index, int) else -1
        failed_line = line_numbers[offset] if 0 <= offset < len(line_numbers) else None
        where = f"{source_name} line {failed_line}" if failed_line is not None else source_name
        raise MapFileError(f"{where}: {exc}", line=failed_line, error=exc) from exc
    finally:
        close = getattr(results, "close", None)
        if close is not None:  # stop the tasks still in flight when the loop ends early
            close()
    return summary
